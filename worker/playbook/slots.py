"""`max_concurrent`: at most N runs of a playbook at once; the others wait `queued`, in order.

`admit` is the start: a new run takes a slot or joins the waiting list. `release_slot` is the
end (worker.finish): the slot goes to the run that waited longest. The slot moves atomically
(events/lua/take_slot.lua, release_slot.lua); a run given a slot that was cancelled meanwhile
hands it on at once, so a cancel never strands a slot.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from events.vocabulary import Outcome, RecordField
from worker.playbook.targets import step_route
from worker.runtime import Runtime
from worker.taskqueue import TaskQueue, step_task_id

log = logging.getLogger(__name__)


def admit(
    rt: Runtime,
    execution_id: str,
    name: str,
    limit: int,
    tasks: TaskQueue,
    secrets: Mapping[str, str] | None = None,
) -> bool:
    """A new queued run of playbook `name` with `max_concurrent: limit`: take a slot and queue
    its first step (True), or leave it queued on the waiting list (False; its `secrets` are
    then dropped: worker.playbook.secrets)."""
    if rt.records.take_slot(execution_id, name, limit):
        start_first_step(rt, execution_id, tasks, secrets)
        return True
    _drop_ended_holders(rt, name, limit, tasks)
    return False


def start_first_step(
    rt: Runtime, execution_id: str, tasks: TaskQueue, secrets: Mapping[str, str] | None = None
) -> bool:
    """Queue the first step of a queued playbook run; False if it was cancelled meanwhile."""
    if rt.records.queue_first_step(execution_id, step_task_id(execution_id, 0)) != Outcome.OK:
        return False
    spec = rt.records.spec(execution_id) or {}
    steps = spec.get("steps") or [{}]
    route = step_route(rt, steps[0])
    tasks.send_step(execution_id, 0, route, secrets=secrets)
    return True


def release_slot(rt: Runtime, execution_id: str, name: str, limit: int, tasks: TaskQueue) -> None:
    todo = rt.records.release_slot(execution_id, name, limit)
    while todo:
        candidate = todo.pop(0)
        try:
            started = start_first_step(rt, candidate, tasks)
        except Exception:
            # The broker refused the task: the run stays queued holding its slot; a cancel
            # (or the next admission's check for ended holders, once it ends) frees it.
            log.exception("could not start waiting run %s of %r", candidate, name)
            continue
        if not started:
            todo += rt.records.release_slot(candidate, name, limit)


def _drop_ended_holders(rt: Runtime, name: str, limit: int, tasks: TaskQueue) -> None:
    """A slot holder whose run ended (or whose record expired) without freeing its slot, as a
    process dying between its last event and `finish` would leave it: free it now, so a
    playbook's runs never wait forever."""
    for holder in rt.records.slot_holders(name):
        status, complete_id = rt.records.fields(holder, RecordField.STATUS, RecordField.COMPLETE_ID)
        if status is None or complete_id is not None:
            log.warning("freeing the %r slot of ended run %s", name, holder)
            release_slot(rt, holder, name, limit, tasks)
