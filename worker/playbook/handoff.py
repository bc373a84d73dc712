"""A step ended and the playbook goes on: queue the next step's task, maybe on another host."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from events.vocabulary import Outcome, Status
from worker.playbook.secrets import secrets_of
from worker.playbook.steps import Ending
from worker.playbook.targets import step_route
from worker.runtime import Runtime
from worker.taskqueue import TaskQueue, step_task_id

log = logging.getLogger(__name__)


def hand_off(
    rt: Runtime,
    execution_id: str,
    index: int,
    spec: Mapping[str, Any],
    tasks: TaskQueue,
    worker: str,
) -> Ending | None:
    """Queue step `index`; an Ending when the run must end here instead."""
    # Everything this step published must be in Redis before the next step (maybe on another
    # host, with its own publisher) publishes anything: ids are given in arrival order.
    rt.publisher.flush(60)
    task_id = step_task_id(execution_id, index)
    found = rt.records.hand_off(execution_id, index, task_id, worker)
    if found == Outcome.CANCEL:
        return Ending(Status.CANCELLED)
    if found != Outcome.OK:
        log.info("playbook %s not handed to step %d: %s", execution_id, index + 1, found)
        return None
    try:
        route = step_route(rt, spec["steps"][index])
        tasks.send_step(execution_id, index, route, secrets=secrets_of(spec))
    except Exception as e:
        log.exception("could not queue step %d of %s", index + 1, execution_id)
        return Ending(Status.FAILED, error=f"could not queue step {index + 1}: {e}")
    # Sent: the run may wait in the queue as long as it takes. Should this fail for good, the
    # lease lapses and the run is declared lost (the step's claim then refuses): better than a
    # run that no reaper would ever end.
    for attempt in range(3):
        try:
            rt.records.handed_off(execution_id, index)
            break
        except Exception:
            log.warning("confirming the hand-off of %s failed", execution_id, exc_info=True)
            time.sleep(0.2 * (attempt + 1))
    return None
