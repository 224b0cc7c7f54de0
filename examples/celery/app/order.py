"""Places an order as the shop's web app would: asks the Go worker to
render its invoice and waits for it, then chains the rendering (Go) and the
mailing (Python) and waits for the mail's result.

    python3 order.py 42
"""
import json
import sys

from celery import chain

from shop import app

order = int(sys.argv[1]) if len(sys.argv) > 1 else 42
render = app.signature("invoices.render", kwargs={"order_id": order, "email": "ada@example.com"})

invoice = render.apply_async().get(timeout=10)
print("rendered by Go:", json.dumps(invoice, sort_keys=True))

mailed = chain(render, app.signature("mail.send")).apply_async().get(timeout=10)
print("rendered by Go, mailed by Python:", json.dumps(mailed, sort_keys=True))
