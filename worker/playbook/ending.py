"""A step ended: the playbook goes on to its next step, or ends here.

The one way on after a step, whoever ended it: the task of a single step, or the host of a
fan-out step whose end was the step's last (worker.playbook.fanout).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import redis

from events.lifecycle import Reporter
from events.subscriber import output_tail
from events.vocabulary import Status
from worker.finish import finish
from worker.playbook.handoff import hand_off
from worker.playbook.render import RenderedStep
from worker.playbook.steps import StepOutcome, after_step, report_ending
from worker.runtime import Runtime
from worker.taskqueue import TaskQueue
from worker.watchdog import lease_kept

log = logging.getLogger(__name__)


def go_on(
    rt: Runtime,
    reporter: Reporter,
    execution_id: str,
    step: RenderedStep,
    outcome: StepOutcome,
    spec: Mapping[str, Any],
    tasks: TaskQueue,
    worker: str,
    started_at: str,
) -> str:
    """Hand off to the next step, or publish how the run ended and let it go; its status."""
    ending = after_step(step, outcome)
    if ending is None:
        ending = hand_off(rt, execution_id, step.step_number, spec, tasks, worker)
        if ending is None:
            return outcome.status
    if ending.status is Status.CANCELLED:
        tail = playbook_output_tail(rt, execution_id, fallback=ending.partial_output)
        ending = replace(ending, partial_output=tail)
    report_ending(reporter, ending, started_at)
    end_run(rt, execution_id, worker, tasks)
    return ending.status


def playbook_output_tail(rt: Runtime, execution_id: str, fallback: str = "") -> str:
    """partialOutput of a cancelled playbook: its last output over every step (earlier steps
    may have run on other hosts, so it comes from the history), or, should Redis fail,
    `fallback` (what this step's executor kept)."""
    try:
        rt.publisher.flush(10)
        return output_tail(rt.redis, rt.keys, execution_id, rt.settings.partial_output_chars)
    except (redis.RedisError, OSError):
        log.warning("partial output of %s from this step only", execution_id, exc_info=True)
        return fallback


def end_run(rt: Runtime, execution_id: str, worker: str, tasks: TaskQueue) -> None:
    with contextlib.suppress(Exception), lease_kept(rt, execution_id, worker):
        rt.publisher.flush(60)
    try:
        finish(rt, execution_id, tasks)
    except Exception:
        log.exception("finishing %s failed", execution_id)
