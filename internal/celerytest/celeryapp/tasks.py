"""A small Celery app for docket's codec tests: JSON only, late acks, UTC.

The broker and the result backend come from CELERY_BROKER and
CELERY_BACKEND.
"""
import os

from celery import Celery

app = Celery("tasks", broker=os.environ["CELERY_BROKER"], backend=os.environ["CELERY_BACKEND"])
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_acks_late=True,
    enable_utc=True,
    result_expires=3600,
    worker_prefetch_multiplier=4,
)


@app.task(name="tasks.add")
def add(x, y):
    return x + y


@app.task(name="tasks.echo")
def echo(*args, **kwargs):
    return [list(args), kwargs]


@app.task(name="tasks.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="tasks.flaky", bind=True)
def flaky(self):
    """Retries once, then returns how many retries it took."""
    if self.request.retries < 1:
        raise self.retry(countdown=0.5)
    return self.request.retries


@app.task(name="tasks.mark", bind=True)
def mark(self, key, n):
    """Counts its run under its id in the hash key, and the runs of Celery's
    workers in key:celery, and returns 2n."""
    app.backend.client.hincrby(key, self.request.id, 1)
    app.backend.client.incr(key + ":celery")
    return 2 * n
