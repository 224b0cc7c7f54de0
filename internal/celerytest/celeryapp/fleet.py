"""Sends argv[3] calls of tasks.mark(argv[2], i) to queue argv[1] and prints
their ids, one a line."""
import sys

from tasks import app

q, key, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(n):
    print(app.send_task("tasks.mark", (key, i), queue=q).id)
