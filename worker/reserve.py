"""RabbitMQ: a worker whose pool is busy holds one task in reserve, not `concurrency` of them.

Tasks are acknowledged when a pool process takes them (early acks), so RabbitMQ's prefetch
window counts only the tasks a worker holds without running them. Celery sets it to
`concurrency x worker_prefetch_multiplier`: a busy worker then holds that many tasks while
another idles, and playbooks stop draining depth-first (the first steps of new runs held in
reserve run before the next step of a started run, whatever their priorities). On Redis
`worker_disable_prefetch` prevents that, but Celery applies it to Redis brokers only
(celery/worker/consumer/tasks.py). This consumer step sets the window to one task once the
task consumer exists, again after every reconnection.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps


class ReserveOne(bootsteps.StartStopStep):  # type: ignore[misc]
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        if c.qos is None or c.connection.transport.driver_type == "redis":
            return  # Redis: worker_disable_prefetch (worker.app)
        c.qos.value = 1
        c.qos.update()
