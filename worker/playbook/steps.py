"""Run one playbook step: the body of a step task between its claim and its hand-off.

`run_step` runs one step with its retries and publishes `playbook_step_start`, the output (each
attempt's, tagged with the step id) and one `playbook_step_complete`. `after_step` decides
whether the playbook goes on; `report_ending` publishes how it ended (worker.playbook.run).

Statuses: a step fails when its last attempt exits non-zero, cannot start or times out (its
record status is then `timeout`). A failed step without `continue_on_error` stops the playbook:
status `failed`, or `timeout` when the step timed out, with an error naming the step and the
step's exit code. With `continue_on_error` the playbook goes on, and it ends `completed` (exit
code 0) when every failed step had it. A cancel ends the step (error `cancelled`) and the
playbook (`cancelled`); a lost or stopping worker fails both with the worker's error.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from events.lifecycle import Reporter
from events.masking import Masker
from events.records import HostRun
from events.settings import Settings
from events.vocabulary import Status
from worker.commands import command_spec, script_argv
from worker.executor import CommandSpec, Executor, StopReason
from worker.playbook.render import RenderedStep
from worker.proctree import CommandTree
from worker.runner import CANCEL_REASON, classify_stop, executor_for, masker_for

Watch = Callable[[Executor], contextlib.AbstractContextManager[Any]]

STEP_CANCELLED_ERROR = "cancelled"


@dataclass(frozen=True)
class StepOutcome:
    status: Status  # a terminal status
    exit_code: int | None
    error: str | None
    duration_ms: int
    attempts: int
    # Set when the step was stopped from outside: a cancel, a lost or stopping worker.
    stop_reason: StopReason | None = None
    partial_output: str = ""

    @property
    def success(self) -> bool:
        return self.status is Status.COMPLETED


@dataclass(frozen=True)
class Ending:
    """How a playbook run ends: its execution_complete (preceded by execution_cancelled)."""

    status: Status  # a terminal status
    exit_code: int | None = None
    error: str | None = None
    partial_output: str = ""


def step_spec(step: RenderedStep) -> CommandSpec:
    """What the executor runs: aws_cli steps without a shell, scripts with `bash -c`."""
    argv = list(step.argv) if step.argv is not None else script_argv(step.script or "")
    return command_spec(
        step.display_command, step.command_type, step.options, argv=argv, env=step.env
    )


@dataclass(frozen=True)
class Supervision:
    """What watches each attempt of a step: `watch` around its executor (cancel and lost-worker
    checks), `cancel_confirmed` to tell a cancel from a kill, `on_start` with its process tree
    (the pids the host's reaper needs)."""

    watch: Watch
    cancel_confirmed: Callable[[], bool]
    on_start: Callable[[CommandTree], None] | None = None
    # Called once, by the first attempt, right before its command starts (Executor's
    # before_spawn): a fan-out step's start barrier.
    before_spawn: Callable[[], None] | None = None


def step_masker(settings: Settings, step: RenderedStep) -> Masker:
    """What the step's events mask: its environment's secrets and its secret params' values.
    The step's own env is enough: masker_for adds the worker's (building the command's whole
    environment here again cost a copy of os.environ per step)."""
    return masker_for(settings, step.env, step.secrets)


def run_step(
    reporter: Reporter, settings: Settings, step: RenderedStep, supervision: Supervision
) -> StepOutcome:
    """Run a step and its retries; publish its start, output and completion."""
    masker = report_step_start(reporter, settings, step)
    outcome = run_attempts(reporter, settings, step, supervision, masker)
    report_step_complete(reporter, step, outcome)
    return outcome


def report_step_start(
    reporter: Reporter, settings: Settings, step: RenderedStep, hosts: list[str] | None = None
) -> Masker:
    """The step's playbook_step_start (a fan-out step's with its frozen `hosts`); from now on
    the reporter masks the secrets of the step's environment and its secret params in
    everything it publishes (the masker returned)."""
    masker = step_masker(settings, step)
    reporter.masker = masker
    reporter.step_start(
        step_id=step.step_id,
        step_number=step.step_number,
        total_steps=step.total_steps,
        step_name=step.step_name,
        command=masker.mask(step.display_command),
        attempt=1,
        hosts=hosts,
    )
    return masker


def report_step_complete(
    reporter: Reporter,
    step: RenderedStep,
    outcome: StepOutcome,
    *,
    started_at: str | None = None,
    hosts: list[HostRun] | None = None,
) -> None:
    """The step's playbook_step_complete (a fan-out step's with its `hosts`)."""
    reporter.step_complete(
        step_id=step.step_id,
        step_number=step.step_number,
        step_name=step.step_name,
        success=outcome.success,
        exit_code=outcome.exit_code,
        duration_ms=outcome.duration_ms,
        error=outcome.error,
        continue_on_error=step.continue_on_error,
        attempts=outcome.attempts,
        cancelled=outcome.status is Status.CANCELLED,
        timed_out=outcome.status is Status.TIMEOUT,
        started_at=started_at,
        hosts=hosts,
    )


def run_attempts(
    reporter: Reporter,
    settings: Settings,
    step: RenderedStep,
    supervision: Supervision,
    masker: Masker | None = None,
) -> StepOutcome:
    """Run a step's command and its retries here (a single step, or one host's share of a
    fan-out step), each attempt under its own process tree; the outcome of the last one.
    `masker`: the step's, when its start was reported here already."""
    spec = step_spec(step)
    if masker is None:
        masker = step_masker(settings, step)
    reporter.masker = masker
    parent_pid = os.getppid()
    t0 = time.monotonic()
    tries = step.retries + 1
    attempt = 0
    while True:
        attempt += 1
        before_spawn = supervision.before_spawn if attempt == 1 else None
        executor = executor_for(
            spec, reporter, settings, masker, supervision.on_start, before_spawn=before_spawn
        )
        try:
            with supervision.watch(executor):
                result = executor.run()
        finally:
            executor.close()
        classify_stop(result, cancel_confirmed=supervision.cancel_confirmed, parent_pid=parent_pid)
        if result.status == Status.COMPLETED or result.stop_reason is not None or attempt >= tries:
            break
        # Each attempt's output is streamed; this line tells them apart in the stream.
        reporter.output(
            "stderr",
            f"[cloudops] attempt {attempt} of {tries} failed ({result.error}); retrying\n",
        )
    status = Status(result.status)
    plain_exit = status in (Status.COMPLETED, Status.FAILED) and result.stop_reason is None
    return StepOutcome(
        status=status,
        exit_code=result.exit_code if plain_exit else None,
        error=STEP_CANCELLED_ERROR if status is Status.CANCELLED else result.error,
        duration_ms=int((time.monotonic() - t0) * 1000),
        attempts=attempt,
        stop_reason=result.stop_reason,
        partial_output=result.partial_output,
    )


def after_step(step: RenderedStep, outcome: StepOutcome) -> Ending | None:
    """How the playbook ends after this step, or None when the next step runs."""
    if outcome.status is Status.CANCELLED:
        return Ending(Status.CANCELLED, partial_output=outcome.partial_output)
    if outcome.stop_reason is not None:  # the worker, not the step, failed
        return Ending(Status.FAILED, error=f"{outcome.error} (step {_label(step)})")
    if not outcome.success and not step.continue_on_error:
        if outcome.status is Status.TIMEOUT:
            return Ending(Status.TIMEOUT, error=f"step {_label(step)} {outcome.error}")
        error = f"step {_label(step)} failed: {outcome.error}"
        return Ending(Status.FAILED, exit_code=outcome.exit_code, error=error)
    if step.step_number == step.total_steps:
        return Ending(Status.COMPLETED, exit_code=0)
    return None


def _label(step: RenderedStep) -> str:
    return f'{step.step_number} "{step.step_name}"'


def report_ending(reporter: Reporter, ending: Ending, started_at: str) -> None:
    if ending.status is Status.CANCELLED:
        reporter.cancelled(CANCEL_REASON, ending.partial_output)
    reporter.complete(ending.status, started_at, exit_code=ending.exit_code, error=ending.error)
