"""Reads task ids from stdin, one a line, waits for each result as a Celery
client does, and prints {id: value} (an error as {"error": text})."""
import json
import sys

from tasks import app

out = {}
for line in sys.stdin:
    task_id = line.strip()
    if not task_id:
        continue
    try:
        out[task_id] = app.AsyncResult(task_id).get(timeout=60)
    except Exception as e:
        out[task_id] = {"error": "%s: %s" % (type(e).__name__, e)}
print(json.dumps(out))
