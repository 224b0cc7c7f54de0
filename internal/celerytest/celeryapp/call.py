"""Calls the tasks a docket worker runs on queue argv[1], as a Python app
would, and prints per call {"value": ..., "seconds": ...} or
{"error": type, "message": text}. argv[2] is the broker: redis, amqp, or
rpc (RabbitMQ with the rpc backend). On RabbitMQ an expired task is
dropped by RabbitMQ itself (Celery gives it the expiry), and the rpc
backend takes no chords: those calls are made on Redis alone."""
import datetime
import json
import sys
import time

from celery import chain, chord

from tasks import app

q, mode = sys.argv[1], sys.argv[2]
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
    "unknown": send("tasks.nope", (1,)),
    "retry": send("tasks.flaky"),
    "chain": chain(sig("tasks.add", (2, 3), queue=q), sig("tasks.add", (10,), queue=q)).apply_async(),
    "link": send("tasks.add", (1, 2), link=sig("tasks.add", (100,), queue=q, task_id=link.id)),
}
if mode == "redis":
    calls["expired"] = send("tasks.add", (1, 1), expires=past)
if mode != "rpc":
    calls["chord"] = chord([sig("tasks.add", (1, 1), queue=q)], sig("tasks.add", (5,), queue=q)).apply_async().parent.results[0]
calls["link"] = app.AsyncResult(link.id)
out = {}
for name, result in calls.items():
    try:
        value = result.get(timeout=20)
        out[name] = {"value": value, "seconds": time.time() - started}
    except Exception as e:  # what a Celery client sees
        out[name] = {"error": type(e).__name__, "message": str(e)}
print(json.dumps(out))
