"""Waits for the result of each task id in argv[1:] as a Celery client does
and prints, per id, {"value": ...} or {"error": type, "message": text}."""
import json
import sys

from tasks import app

out = {}
for task_id in sys.argv[1:]:
    try:
        out[task_id] = {"value": app.AsyncResult(task_id).get(timeout=10)}
    except Exception as e:  # the failure a Celery client sees
        out[task_id] = {"error": type(e).__name__, "message": str(e)}
print(json.dumps(out))
