"""Playbooks on the Celery fleet: submit a run, and the body of the per-step task.

A run is one record (`commandType: playbook`) and one Celery task per step, each sent to its
step's queue only when the previous step ended, by the task that ran it:

    submit: validate and render every step (PlaybookError before anything exists), create the
            record (queued), then queue step 1 or, when `max_concurrent` runs of the playbook
            hold a slot, leave the run queued on the playbook's waiting list (worker.finish).
    task:   claim step i (step 1 moves queued -> running and publishes execution_started),
            run it with its retries (worker.steps), then either hand off to step i+1 (publish
            everything first, so events stay in order across hosts) or end the run and finish.

Between two steps no worker holds the run: it leaves the running set (the reaper must not
declare it lost while the next step waits in a queue), and a cancel in that gap ends it at once
(events.records CANCEL_LUA); the late step's claim refuses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import redis

from events.lifecycle import Reporter
from events.models import ExecutionOptions, utc_now
from events.records import StepRecord
from events.subscriber import output_tail
from worker.dispatch import new_execution_id
from worker.executor import Executor
from worker.finish import StepSender, admit, finish, step_task_id
from worker.playbook_spec import (
    Playbook,
    RenderedStep,
    load_playbook,
    render_options,
    render_playbook,
)
from worker.runner import (
    TaskStop,
    cancel_confirmed_in,
    cancel_unstarted,
    masker_for,
    pid_recorder,
    sigterm_stops,
)
from worker.runtime import Runtime
from worker.steps import Ending, after_step, report_ending, run_step
from worker.watchdog import Watchdog, lease_kept

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedPlaybook:
    """A playbook checked and rendered with its run's params: everything a run needs."""

    playbook: Playbook
    options: ExecutionOptions
    steps: list[RenderedStep]

    @property
    def name(self) -> str:
        return self.playbook.name

    @property
    def max_concurrent(self) -> int | None:
        return self.playbook.max_concurrent

    def step_records(self) -> list[StepRecord]:
        return [StepRecord(step_id=s.step_id, step_name=s.step_name) for s in self.steps]

    def spec(self) -> dict[str, Any]:
        """What the step tasks read back from the record."""
        return {
            "playbook": self.name,
            "source": self.playbook.source,
            "maxConcurrent": self.max_concurrent,
            "options": self.options.wire(),
            "steps": [s.to_dict() for s in self.steps],
        }


def prepare_playbook(
    playbook: str | Mapping[str, Any],
    params: Mapping[str, object] | None = None,
    *,
    source: str = "<request>",
) -> PreparedPlaybook:
    """Load, check and render every step, so bad params fail before anything is queued.

    Raises PlaybookError naming the source, the step and the field.
    """
    pb = load_playbook(playbook, source_name=source, params=params)
    return PreparedPlaybook(pb, render_options(pb, params), render_playbook(pb, params))


def submit_playbook(
    rt: Runtime,
    send: StepSender,
    playbook: str | Mapping[str, Any],
    params: Mapping[str, object] | None = None,
    *,
    source: str = "<request>",
) -> str:
    """Validate, create the record (queued) and queue the first step, or wait for a slot."""
    prepared = prepare_playbook(playbook, params, source=source)
    execution_id = new_execution_id()
    limit = prepared.max_concurrent
    extra = {"slotName": prepared.name, "maxConcurrent": str(limit)} if limit else {}
    if not limit:
        # Queued at creation: the first step's task follows right away.
        extra = {"stepQueued": "0", "taskId": step_task_id(execution_id, 0)}
    rt.records.create(
        execution_id,
        command=prepared.name,
        command_type="playbook",
        options=prepared.options.wire(),
        queued_at=utc_now(),
        spec=prepared.spec(),
        steps=prepared.step_records(),
        extra=extra,
    )
    if limit:
        admit(rt, execution_id, prepared.name, limit, send)
    else:
        send(execution_id, 0, prepared.steps[0].queue)
    return execution_id


def run_playbook_step(
    rt: Runtime,
    execution_id: str,
    index: int,
    *,
    worker: str,
    task_id: str,
    send: StepSender,
) -> str:
    """The step task's body: claim step `index`, run it, then hand off or end the run."""
    expect = "queued" if index == 0 else "running"
    claim = rt.records.claim(execution_id, worker, task_id, expect=expect, step=index)
    reporter = Reporter(rt.publisher, execution_id, worker=worker)
    if claim == "cancel":
        cancel_unstarted(reporter, started_at=rt.records.field(execution_id, "startedAt"))
        _end(rt, execution_id, worker, send)
        return "cancelled"
    if claim != "ok":
        # Cancelled while queued, already ended, a duplicate delivery, or unknown.
        log.info("step %d of %s not run: %s", index + 1, execution_id, claim)
        return claim
    stop = TaskStop()
    try:
        with sigterm_stops(stop):
            return _run_claimed(rt, reporter, execution_id, index, worker, send, stop)
    finally:
        with contextlib.suppress(Exception):
            rt.publisher.flush(60)
        rt.publisher.forget(execution_id)


def _run_claimed(
    rt: Runtime,
    reporter: Reporter,
    execution_id: str,
    index: int,
    worker: str,
    send: StepSender,
    stop: TaskStop,
) -> str:
    spec_text, started_at = rt.records.fields(execution_id, "spec", "startedAt")
    spec: dict[str, Any] = json.loads(spec_text or "{}")
    step = RenderedStep.from_dict(spec["steps"][index])
    if index == 0:
        options = ExecutionOptions.model_validate(spec.get("options") or {})
        name = masker_for(rt.settings, {}).mask(str(spec.get("playbook", "")))
        started_at = reporter.started(name, "playbook", options)
    started_at = started_at or utc_now()

    @contextlib.contextmanager
    def watch(executor: Executor) -> Iterator[None]:
        with stop.attached(executor), Watchdog(rt, execution_id, worker, executor):
            yield

    outcome = run_step(
        reporter,
        rt.settings,
        step,
        watch=watch,
        cancel_confirmed=lambda: cancel_confirmed_in(rt, execution_id),
        on_start=pid_recorder(rt, execution_id),
    )
    ending = after_step(step, outcome)
    if ending is None:
        ending = _hand_off(rt, execution_id, index + 1, spec, send, worker)
        if ending is None:
            return outcome.status
    if ending.status == "cancelled":
        tail = playbook_output_tail(rt, execution_id, fallback=ending.partial_output)
        ending = replace(ending, partial_output=tail)
    report_ending(reporter, ending, started_at)
    _end(rt, execution_id, worker, send)
    return ending.status


def playbook_output_tail(rt: Runtime, execution_id: str, fallback: str = "") -> str:
    """partialOutput of a cancelled playbook: its last output over every step (earlier steps
    may have run on other hosts, so it comes from the history), or, should Redis fail,
    `fallback` (what this step's executor kept)."""
    try:
        rt.publisher.flush(10)
        return output_tail(rt.redis, rt.keys, execution_id, rt.settings.partial_output_bytes)
    except (redis.RedisError, OSError):
        log.warning("partial output of %s from this step only", execution_id, exc_info=True)
        return fallback


def _hand_off(
    rt: Runtime,
    execution_id: str,
    index: int,
    spec: Mapping[str, Any],
    send: StepSender,
    worker: str,
) -> Ending | None:
    """Queue step `index`; an Ending when the run must end here instead."""
    # Everything this step published must be in Redis before the next step (maybe on another
    # host, with its own publisher) publishes anything: ids are given in arrival order.
    rt.publisher.flush(60)
    task_id = step_task_id(execution_id, index)
    found = rt.records.hand_off(execution_id, index, task_id, worker)
    if found == "cancel":
        return Ending("cancelled")
    if found != "ok":
        log.info("playbook %s not handed to step %d: %s", execution_id, index + 1, found)
        return None
    try:
        send(execution_id, index, spec["steps"][index].get("queue"))
    except Exception as e:
        log.exception("could not queue step %d of %s", index + 1, execution_id)
        return Ending("failed", error=f"could not queue step {index + 1}: {e}")
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


def _end(rt: Runtime, execution_id: str, worker: str, send: StepSender) -> None:
    with contextlib.suppress(Exception), lease_kept(rt, execution_id, worker):
        rt.publisher.flush(60)
    try:
        finish(rt, execution_id, send)
    except Exception:
        log.exception("finishing %s failed", execution_id)
