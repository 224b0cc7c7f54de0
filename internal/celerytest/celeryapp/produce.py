"""Sends the codec tests' tasks to the queue argv[1] and prints their ids."""
import json
import sys

from celery import chain

from tasks import app

q = sys.argv[1]
sig = app.signature
ids = {
    "add": app.send_task("tasks.add", args=[2, 3], queue=q).id,
    "kwargs": app.send_task("tasks.echo", kwargs={"x": 1, "s": "é"}, queue=q).id,
    "countdown": app.send_task("tasks.add", args=[1, 1], queue=q, countdown=30).id,
    "expires": app.send_task("tasks.add", args=[1, 1], queue=q, expires=120).id,
    "limits": app.send_task("tasks.add", args=[1, 1], queue=q, time_limit=10, soft_time_limit=5, retries=2).id,
    "link": app.send_task("tasks.add", args=[2, 2], queue=q, link=sig("tasks.echo", args=["cb"], queue=q)).id,
    "chain": chain(sig("tasks.add", (1, 2), queue=q), sig("tasks.add", (3,), queue=q), sig("tasks.echo", queue=q)).apply_async().parent.parent.id,
}
print(json.dumps(ids))
