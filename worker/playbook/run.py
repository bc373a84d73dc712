"""Playbooks on the fleet: submit a run, and the body of the per-step task.

A run is one record (`commandType: playbook`) and one task per step, each sent to its step's
queue only when the previous step ended, by the task that ran it:

    submit: validate and render every step (PlaybookError before anything exists), create the
            record (queued), then queue step 1 or, when `max_concurrent` runs of the playbook
            hold a slot, leave the run queued on the playbook's waiting list (slots.py).
    task:   claim step i (step 1 moves queued -> running and publishes execution_started),
            run it with its retries (steps.py), then either hand off to step i+1 (handoff.py)
            or end the run and finish.

Between two steps no worker holds the run: it leaves the running set (the reaper must not
declare it lost while the next step waits in a queue), and a cancel in that gap ends it at once
(events/lua/cancel.lua); the late step's claim refuses.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from events.lifecycle import Reporter
from events.models import ExecutionOptions, utc_now
from events.notifications import SPEC_NOTIFY
from events.records import StepRecord
from events.requests import SavedRef
from events.vocabulary import CommandType, Outcome, RecordField, Status
from worker.playbook.ending import end_run, go_on
from worker.playbook.fanout import start_fan_out
from worker.playbook.loading import load_playbook
from worker.playbook.params import resolve_params, secret_names
from worker.playbook.render import RenderedStep, render_values
from worker.playbook.secrets import (
    MissingSecretError,
    record_spec,
    shown_values,
    step_of,
    with_secrets,
)
from worker.playbook.slots import admit
from worker.playbook.spec import Playbook
from worker.playbook.steps import Supervision, run_step
from worker.playbook.targets import step_route
from worker.runner import (
    TaskStop,
    cancel_confirmed_in,
    cancel_unstarted,
    masker_for,
    pid_recorder,
    sigterm_stops,
    watched,
)
from worker.runtime import Runtime
from worker.taskqueue import TaskQueue, step_task_id

log = logging.getLogger(__name__)
F = RecordField


@dataclass(frozen=True)
class PreparedPlaybook:
    """A playbook checked and rendered with its run's params: everything a run needs."""

    playbook: Playbook
    options: ExecutionOptions
    steps: list[RenderedStep]  # each secret as `***` (worker.playbook.secrets)
    values: Mapping[str, str]  # the params' values, secrets as `***`
    secrets: Mapping[str, str]  # the secret params' values: for the tasks' arguments only

    @property
    def name(self) -> str:
        return self.playbook.name

    @property
    def max_concurrent(self) -> int | None:
        return self.playbook.max_concurrent

    def spec(self) -> dict[str, Any]:
        """What the step tasks read back from the record."""
        return {
            "playbook": self.name,
            "source": self.playbook.source,
            "maxConcurrent": self.max_concurrent,
            "options": self.options.wire(),
            SPEC_NOTIFY: [n.target().spec() for n in self.playbook.notify],
        } | record_spec(
            self.playbook, [s.to_dict() for s in self.steps], self.values, list(self.secrets)
        )


def prepare_playbook(
    playbook: str | Mapping[str, Any],
    params: Mapping[str, object] | None = None,
    *,
    source: str = "<request>",
) -> PreparedPlaybook:
    """Load, check and render every step, so bad params fail before anything is queued.

    Raises PlaybookError listing every problem, each naming the source, the step and the field.
    """
    pb = load_playbook(playbook, source_name=source, params=params)
    values = resolve_params(pb, params)
    names = [n for n in secret_names(pb) if n in values]
    shown = shown_values(values, names)
    options, steps = render_values(pb, shown)
    return PreparedPlaybook(pb, options, steps, shown, {n: values[n] for n in names})


def submit_playbook(
    rt: Runtime,
    tasks: TaskQueue,
    execution_id: str,
    playbook: str | Mapping[str, Any],
    params: Mapping[str, object] | None = None,
    *,
    source: str = "<request>",
    saved: SavedRef | None = None,
    extra: Mapping[str, str] | None = None,
) -> str:
    """Validate, create the record (queued) and queue the first step, or wait for a slot.
    `saved`: the saved playbook (name, version) this run is of, named by its record; `extra`:
    more record fields (who started it, events.starts.origin_fields)."""
    prepared = prepare_playbook(playbook, params, source=source)
    fields = saved.record_fields() if saved is not None else {}
    return queue_run(
        rt,
        tasks,
        execution_id,
        prepared.spec(),
        extra=fields | dict(extra or {}),
        secrets=prepared.secrets,
    )


def step_records_of(spec: Mapping[str, Any]) -> list[StepRecord]:
    """The record's steps (all pending) of a run of `spec`."""
    return [StepRecord(step_id=s["step_id"], step_name=s["step_name"]) for s in spec["steps"]]


def queue_run(
    rt: Runtime,
    tasks: TaskQueue,
    execution_id: str,
    spec: Mapping[str, Any],
    *,
    extra: Mapping[str, str],
    secrets: Mapping[str, str] | None = None,
) -> str:
    """Create the record of a run of `spec` (PreparedPlaybook.spec's form; queued) and queue
    its first step, or leave it waiting for a `max_concurrent` slot. `extra`: record fields
    (the saved playbook's name and version, `rerunOf`); `secrets`: the secret params' values,
    for the first step's task only (worker.playbook.secrets)."""
    name = str(spec["playbook"])
    limit = spec.get("maxConcurrent")
    fields: dict[str, str] = {F.SLOT_NAME: name, F.MAX_CONCURRENT: str(limit)}
    if not limit:
        # Queued at creation: the first step's task follows right away.
        fields = {F.STEP_QUEUED: "0", F.TASK_ID: step_task_id(execution_id, 0)}
    rt.records.create(
        execution_id,
        command=name,
        command_type=CommandType.PLAYBOOK,
        options=spec.get("options") or {},
        queued_at=utc_now(),
        spec=spec,
        steps=step_records_of(spec),
        extra=fields | dict(extra),
    )
    if limit:
        admit(rt, execution_id, name, int(limit), tasks, secrets)
    else:
        route = step_route(rt, spec["steps"][0])
        tasks.send_step(execution_id, 0, route, secrets=secrets)
    return execution_id


def run_playbook_step(
    rt: Runtime,
    execution_id: str,
    index: int,
    *,
    worker: str,
    task_id: str,
    tasks: TaskQueue,
    stop: TaskStop | None = None,
    secrets: Mapping[str, str] | None = None,
) -> str:
    """The step task's body: claim step `index`, run it, then hand off or end the run.
    `secrets`: the run's secret params' values, from the task's arguments."""
    expect = Status.QUEUED if index == 0 else Status.RUNNING
    claim = rt.records.claim(execution_id, worker, task_id, expect=expect, step=index)
    reporter = Reporter(rt.publisher, execution_id, worker=worker)
    if claim == Outcome.CANCEL:
        cancel_unstarted(reporter, started_at=rt.records.field(execution_id, F.STARTED_AT))
        end_run(rt, execution_id, worker, tasks)
        return Status.CANCELLED
    if claim != Outcome.OK:
        # Cancelled while queued, already ended, a duplicate delivery, or unknown.
        log.info("step %d of %s not run: %s", index + 1, execution_id, claim)
        return claim
    stop = stop or TaskStop()
    try:
        with sigterm_stops(stop):
            return _run_claimed(rt, reporter, execution_id, index, worker, tasks, stop, secrets)
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
    tasks: TaskQueue,
    stop: TaskStop,
    secrets: Mapping[str, str] | None,
) -> str:
    reporter.masker = masker = masker_for(rt.settings, {}, (secrets or {}).values())
    spec_text, started_at = rt.records.fields(execution_id, F.SPEC, F.STARTED_AT)
    spec = with_secrets(json.loads(spec_text or "{}"), secrets)
    if index == 0:
        options = ExecutionOptions.model_validate(spec.get("options") or {})
        name = masker.mask(str(spec.get("playbook", "")))
        started_at = reporter.started(name, CommandType.PLAYBOOK, options)
    started_at = started_at or utc_now()
    try:
        step = step_of(spec, index)
    except MissingSecretError as e:
        reporter.complete(Status.FAILED, started_at, error=str(e))
        end_run(rt, execution_id, worker, tasks)
        return Status.FAILED

    watch = watched(rt, execution_id, worker, stop)
    if step.targets is not None:
        return start_fan_out(rt, reporter, execution_id, step, spec, tasks, worker, started_at)
    supervision = Supervision(
        watch, lambda: cancel_confirmed_in(rt, execution_id), pid_recorder(rt, execution_id)
    )
    outcome = run_step(reporter, rt.settings, step, supervision)
    return go_on(rt, reporter, execution_id, step, outcome, spec, tasks, worker, started_at)
