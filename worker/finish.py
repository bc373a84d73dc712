"""How a run lets go of the fleet once its `execution_complete` is published.

Every terminal path calls `finish`: the task that ran a command, the step task that ended a
playbook, the reaper, the cancel of a queued run. It releases the lease and the running set,
frees the run's `max_concurrent` slot, starts the runs that waited longest for it
(worker.playbook.slots), and queues the notification of its webhooks (worker.notify).
"""

from __future__ import annotations

from events.vocabulary import RecordField
from worker.notify import notify_later
from worker.playbook.slots import release_slot
from worker.runtime import Runtime
from worker.taskqueue import TaskQueue


def finish(rt: Runtime, execution_id: str, tasks: TaskQueue, *, notify: bool = True) -> None:
    """The run ended (its execution_complete is out): free what it held, start who waited, and
    queue its notification unless `notify` is False."""
    status_and_spec: list[str | None] | None = None
    try:
        rt.records.release(execution_id)
        # One read for the slot and, for notify_later, the status and spec.
        name, limit, *status_and_spec = rt.records.fields(
            execution_id,
            RecordField.SLOT_NAME,
            RecordField.MAX_CONCURRENT,
            RecordField.STATUS,
            RecordField.SPEC,
        )
        if name and limit:
            release_slot(rt, execution_id, name, int(limit), tasks)
    finally:
        if notify:
            notify_later(rt, execution_id, tasks, status_and_spec)
