"""The Python side of docket's Celery example: a shop whose Celery app sends
invoices to be rendered by a Go worker (invoices.render, routed to the Go
worker's queue, shop.go) and keeps one task of its own, mail.send (on the
shop's queue, shop), that the Go worker calls.

Broker and result backend come from CELERY_BROKER and CELERY_BACKEND
(default: Redis on 127.0.0.1, database 0, for both).
"""
import os

from celery import Celery

broker = os.environ.get("CELERY_BROKER", "redis://127.0.0.1:6379/0")
app = Celery("shop", broker=broker, backend=os.environ.get("CELERY_BACKEND", broker))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_acks_late=True,
    task_default_queue="shop",
    task_routes={"invoices.*": {"queue": "shop.go"}},
    enable_utc=True,
    result_expires=int(os.environ.get("CELERY_RESULT_EXPIRES", 86400)),
)


@app.task(name="mail.send")
def send(invoice):
    """Mails an invoice (here: pretends to) and says to whom."""
    return {"sent_to": invoice["email"], "subject": "Invoice %s" % invoice["number"]}
