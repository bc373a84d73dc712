"""The raw Celery baseline of the fan-out row (tests/benchmarks/fanout.py), run by the row's
very workers: a plain task on the cloudops worker's own Celery app that runs a command with
`subprocess` and pushes when it started and what it printed to a Redis list. The row's
workers import this module before `cloudops worker` starts (`cloudops_argv(preload=...)`),
so the baseline shares their processes, pool, broker and worker-direct queues.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import redis

from worker.app import app
from worker.taskqueue import direct

TASK_RAW = "bench.raw_host"
_clients: dict[str, redis.Redis] = {}


@app.task(name=TASK_RAW)  # type: ignore[untyped-decorator]
def raw_host(redis_url: str, reply_key: str, command: str) -> None:
    started = time.time()
    done = subprocess.run(["bash", "-c", command], capture_output=True, check=False)
    # One client per pool process, made after the fork.
    client = _clients.get(redis_url)
    if client is None:
        client = _clients[redis_url] = redis.Redis.from_url(redis_url)
    reply = {"started": started, "exitCode": done.returncode, "stdout": done.stdout.decode()}
    client.rpush(reply_key, json.dumps(reply))


def send_raw(client_app: Any, host: str, redis_url: str, reply_key: str, command: str) -> None:
    """Send the raw task to worker `host`'s own queue, by the route a fan-out host's run takes
    (worker.taskqueue.direct)."""
    client_app.send_task(TASK_RAW, args=[redis_url, reply_key, command], **direct(host))
