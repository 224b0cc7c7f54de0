"""Calls the tasks a docket worker runs on queue argv[1], as a Python app
would, and prints per call {"value": ..., "seconds": ...} or
{"error": type, "message": text}."""
import datetime
import json
import sys
import time

from celery import chain, chord

from tasks import app

q = sys.argv[1]
sig = app.signature


def send(name, args=(), kwargs=None, **opts):
    return app.send_task(name, args, kwargs, queue=q, **opts)


past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)
link = sig("tasks.add", (100,), queue=q).freeze()
started = time.time()
calls = {
    "add": send("tasks.add", (2, 3)),
    "kwargs": send("tasks.addkw", kwargs={"x": 4, "y": 5}),
    "fail": send("tasks.fail", ("kaput",)),
    "countdown": send("tasks.add", (1, 1), countdown=2),
    "expired": send("tasks.add", (1, 1), expires=past),
    "unknown": send("tasks.nope", (1,)),
    "retry": send("tasks.flaky"),
    "chain": chain(sig("tasks.add", (2, 3), queue=q), sig("tasks.add", (10,), queue=q)).apply_async(),
    "link": send("tasks.add", (1, 2), link=sig("tasks.add", (100,), queue=q, task_id=link.id)),
    "chord": chord([sig("tasks.add", (1, 1), queue=q)], sig("tasks.add", (5,), queue=q)).apply_async().parent.results[0],
}
calls["link"] = app.AsyncResult(link.id)
out = {}
for name, result in calls.items():
    try:
        value = result.get(timeout=20)
        out[name] = {"value": value, "seconds": time.time() - started}
    except Exception as e:  # what a Celery client sees
        out[name] = {"error": type(e).__name__, "message": str(e)}
print(json.dumps(out))
