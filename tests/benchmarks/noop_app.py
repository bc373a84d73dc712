"""The raw Celery baseline: a tiny app whose only task tells Redis it started, run by a plain
`celery worker` (prefork, no task events) on the same broker, under a key prefix and queue of
its own.

    python -m tests.benchmarks.noop_app BROKER_URL KEY_PREFIX QUEUE CONCURRENCY HOSTNAME
"""

from __future__ import annotations

import sys
import time
from typing import Any

import redis
from celery import Celery

TASK_NOOP = "bench.noop"
_clients: dict[str, redis.Redis] = {}


def make_app(broker_url: str, key_prefix: str, queue: str) -> Celery:
    app = Celery("cloudops_bench_noop", set_as_current=False)
    app.conf.update(
        broker_url=broker_url,
        broker_transport_options={"global_keyprefix": f"{key_prefix}:celery:"},
        broker_connection_retry_on_startup=True,
        task_default_queue=queue,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )

    @app.task(name=TASK_NOOP)  # type: ignore[untyped-decorator]
    def noop(redis_url: str, reply_key: str) -> None:
        # One client per pool process, made after the fork.
        client = _clients.get(redis_url)
        if client is None:
            client = _clients[redis_url] = redis.Redis.from_url(redis_url)
        client.rpush(reply_key, time.monotonic_ns())

    return app


def send_noop(app: Celery, redis_url: str, reply_key: str, queue: str) -> Any:
    return app.send_task(TASK_NOOP, args=[redis_url, reply_key], queue=queue)


def main(argv: list[str]) -> None:
    if len(argv) != 5:
        sys.exit(__doc__)
    broker_url, key_prefix, queue, concurrency, hostname = argv
    app = make_app(broker_url, key_prefix, queue)
    app.worker_main(
        ["worker", "-P", "prefork", "-c", concurrency, "-Q", queue, "-n", hostname, "-l", "INFO"]
    )


if __name__ == "__main__":
    main(sys.argv[1:])
