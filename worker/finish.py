"""How a run lets go of the fleet, and how a playbook run waiting for a slot gets its turn.

Every terminal path calls `finish` once its `execution_complete` is published: the task that ran
a command, the step task that ended a playbook, the reaper, the cancel of a queued run. It
releases the lease and the running set, frees the run's `max_concurrent` slot, and starts the
runs that waited longest for it. `admit` is the other end: a new run takes a slot or waits.

The slot moves atomically (events.records TAKE_SLOT_LUA / RELEASE_SLOT_LUA); a run given a slot
that was cancelled meanwhile hands it on at once, so a cancel never strands a slot.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from worker.app import TASK_RUN_STEP
from worker.runtime import Runtime

log = logging.getLogger(__name__)


class StepSender(Protocol):
    """Queue the task of step `index` (0-based) of a playbook run on `queue` (None: default)."""

    def __call__(self, execution_id: str, index: int, queue: str | None) -> None: ...


def step_task_id(execution_id: str, index: int) -> str:
    """Readable in Flower and unique per step: `<execution id>.s<step number>`."""
    return f"{execution_id}.s{index + 1}"


# A run that started goes before runs waiting to start: the first step of a run is sent with
# kombu's lowest Redis priority (the Redis transport pops priority 0, the default, first), so a
# finishing step's successor does not queue behind a whole batch of new runs, each started run
# ends promptly, and the rest stay `queued`. (An AMQP broker reads priorities the other way.)
FIRST_STEP_PRIORITY = 9


def celery_step_sender(app: Any, default_queue: str) -> StepSender:
    """A StepSender through a Celery app (the worker's, or a dispatcher's client app)."""

    def send(execution_id: str, index: int, queue: str | None) -> None:
        app.send_task(
            TASK_RUN_STEP,
            args=[execution_id, index],
            task_id=step_task_id(execution_id, index),
            queue=queue or default_queue,
            priority=FIRST_STEP_PRIORITY if index == 0 else None,
        )

    return send


def finish(rt: Runtime, execution_id: str, send: StepSender) -> None:
    """The run ended (its execution_complete is out): free what it held, start who waited."""
    rt.records.release(execution_id)
    name, limit = rt.records.fields(execution_id, "slotName", "maxConcurrent")
    if name and limit:
        _release_slot(rt, execution_id, name, int(limit), send)


def admit(rt: Runtime, execution_id: str, name: str, limit: int, send: StepSender) -> bool:
    """A new queued run of playbook `name` with `max_concurrent: limit`: take a slot and queue
    its first step (True), or leave it queued on the waiting list (False)."""
    if rt.records.take_slot(execution_id, name, limit):
        start_first_step(rt, execution_id, send)
        return True
    _drop_ended_holders(rt, name, limit, send)
    return False


def start_first_step(rt: Runtime, execution_id: str, send: StepSender) -> bool:
    """Queue the first step of a queued playbook run; False if it was cancelled meanwhile."""
    if rt.records.queue_first_step(execution_id, step_task_id(execution_id, 0)) != "ok":
        return False
    spec = rt.records.spec(execution_id) or {}
    steps = spec.get("steps") or [{}]
    send(execution_id, 0, steps[0].get("queue"))
    return True


def _release_slot(rt: Runtime, execution_id: str, name: str, limit: int, send: StepSender) -> None:
    todo = rt.records.release_slot(execution_id, name, limit)
    while todo:
        candidate = todo.pop(0)
        try:
            started = start_first_step(rt, candidate, send)
        except Exception:
            # The broker refused the task: the run stays queued holding its slot; a cancel
            # (or the next admission's check for ended holders, once it ends) frees it.
            log.exception("could not start waiting run %s of %r", candidate, name)
            continue
        if not started:
            todo += rt.records.release_slot(candidate, name, limit)


def _drop_ended_holders(rt: Runtime, name: str, limit: int, send: StepSender) -> None:
    """A slot holder whose run ended (or whose record expired) without freeing its slot, as a
    process dying between its last event and `finish` would leave it: free it now, so a
    playbook's runs never wait forever."""
    for holder in rt.records.slot_holders(name):
        status, complete_id = rt.records.fields(holder, "status", "completeId")
        if status is None or complete_id is not None:
            log.warning("freeing the %r slot of ended run %s", name, holder)
            _release_slot(rt, holder, name, limit, send)
