"""Run one command execution from its claim to its single `execution_complete`.

`run_queued_command` is the body of the command task, on a Celery worker and in embedded mode
alike: claim the execution in Redis (so it runs once, and never after a cancel), publish
started, run the command under a watchdog, publish cancelled + complete or complete, and let
go of it (worker.finish). The pieces shared with playbook steps (stops, masking, classifying a
stop nobody asked for) live here too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from events.lifecycle import Reporter
from events.masking import Masker
from events.models import ExecutionOptions, utc_now
from events.settings import Settings
from events.vocabulary import CommandType, Outcome, RecordField, Status
from worker.commands import command_spec
from worker.executor import CommandSpec, Executor, RunResult, StopReason
from worker.finish import finish
from worker.leftovers import HostRecord, host_dir
from worker.proctree import CommandTree, parent_died
from worker.runtime import Runtime
from worker.taskqueue import TaskQueue
from worker.watchdog import Watchdog, lease_kept

log = logging.getLogger(__name__)

CANCEL_REASON = "User requested cancellation"
WORKER_LOST_ERROR = "worker lost: the worker process running this execution died"


def masker_for(settings: Settings, env: Mapping[str, str], secrets: Iterable[str] = ()) -> Masker:
    """What an execution's events mask: the secret variables of its environment and of the
    worker's, and `secrets` (a playbook's secret params' values)."""
    names = settings.secret_names
    return Masker(
        [*(env.get(n, "") for n in names), *(os.environ.get(n, "") for n in names), *secrets]
    )


def executor_for(
    spec: CommandSpec,
    reporter: Reporter,
    settings: Settings,
    masker: Masker,
    on_start: Callable[[CommandTree], None] | None = None,
    *,
    before_spawn: Callable[[], None] | None = None,
) -> Executor:
    """The executor of one command of an execution, its processes on the host's record."""
    where = host_dir(settings.state_dir, settings.key_prefix, reporter.worker or "embedded")
    record = HostRecord(where, reporter.execution_id)

    def started(tree: CommandTree) -> None:
        record.write(tree)
        if on_start is not None:
            on_start(tree)

    return Executor(
        spec,
        reporter.masked_output,
        masker=masker,
        flush_interval_ms=settings.flush_interval_ms,
        max_chunk_bytes=settings.max_chunk_bytes,
        kill_grace_s=settings.kill_grace_s,
        partial_output_chars=settings.partial_output_chars,
        on_start=started,
        on_end=record.remove,
        guard=settings.guard,
        output_idle=reporter.output_idle,
        before_spawn=before_spawn,
    )


class Stoppable(Protocol):
    def request_stop(self, reason: StopReason = StopReason.CANCELLED) -> None: ...


class TaskStop:
    """A stop for a whole task: SIGTERM (a revoke, or the worker's death) stops the command
    running now and every later one, and never raises SystemExit between them (billiard's
    handler would, leaving a claimed execution with no execution_complete). Only called from
    the signal handler and the task's own thread."""

    def __init__(self) -> None:
        self.reason: StopReason | None = None
        self.executor: Executor | None = None

    def request_stop(self, reason: StopReason = StopReason.CANCELLED) -> None:
        if self.reason is None:
            self.reason = reason
        executor = self.executor
        if executor is not None:
            executor.request_stop(reason)

    @contextlib.contextmanager
    def attached(self, executor: Executor) -> Iterator[None]:
        self.executor = executor
        if self.reason is not None:
            executor.request_stop(self.reason)
        try:
            yield
        finally:
            self.executor = None


@contextlib.contextmanager
def sigterm_stops(executor: Stoppable) -> Iterator[None]:
    """Celery's revoke(terminate=True) sends SIGTERM to the pool process running the task;
    billiard would turn it into SystemExit and orphan the command's tree. Instead, we stop the
    executor, which kills the whole session and reports."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(*_: object) -> None:
        # Also the parent-death signal (see worker.tasks): classify_stop tells them apart.
        executor.request_stop(StopReason.CANCELLED)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def report_result(
    reporter: Reporter,
    result: RunResult,
    started_at: str,
    *,
    cancel_confirmed: Callable[[], bool],
    parent_pid: int,
    wait: bool = False,
) -> str:
    """Publish how the run ended; return the execution's status."""
    classify_stop(result, cancel_confirmed=cancel_confirmed, parent_pid=parent_pid)
    status = Status(result.status)
    if status is Status.CANCELLED:
        reporter.cancelled(CANCEL_REASON, result.partial_output)
        reporter.complete(Status.CANCELLED, started_at, wait=wait)
        return status
    exit_code = result.exit_code if status in (Status.COMPLETED, Status.FAILED) else None
    reporter.complete(status, started_at, exit_code=exit_code, error=result.error, wait=wait)
    return status


def classify_stop(
    result: RunResult, *, cancel_confirmed: Callable[[], bool], parent_pid: int
) -> RunResult:
    """A stop nobody asked for is not a cancel: turn it into the failure it is, in place."""
    if result.stop_reason is StopReason.CANCELLED and not cancel_confirmed():
        # A SIGTERM with no cancel request: our worker died (the kernel's parent-death signal;
        # we were re-parented) or it is being shut down; either way not the user's doing.
        result.status = "failed"
        if parent_died(parent_pid):
            result.error, result.stop_reason = WORKER_LOST_ERROR, StopReason.WORKER_LOST
        else:
            result.error, result.stop_reason = "worker shut down while running", StopReason.SHUTDOWN
    return result


def cancel_unstarted(
    reporter: Reporter,
    *,
    wait: bool = False,
    started_at: str | None = None,
    partial_output: str = "",
) -> None:
    """A cancelled execution with nothing running still ends with cancelled + complete.
    `started_at`: when it started (a playbook cancelled between two steps), if it did, and
    `partial_output` what its steps printed."""
    at = started_at or utc_now()
    reporter.cancelled(CANCEL_REASON, partial_output)
    reporter.complete(Status.CANCELLED, at, wait=wait)


def pid_recorder(rt: Runtime, execution_id: str) -> Callable[[CommandTree], None]:
    """Record the command's and the pool process's pids (for the reaper of this host)."""

    def on_start(tree: CommandTree) -> None:
        with contextlib.suppress(Exception):
            rt.records.update(
                execution_id, {RecordField.PID: tree.pid, RecordField.WORKER_PID: os.getpid()}
            )

    return on_start


def run_queued_command(
    rt: Runtime,
    execution_id: str,
    *,
    worker: str,
    task_id: str,
    tasks: TaskQueue,
    stop: TaskStop | None = None,
) -> str:
    """The command task's body: claim, run, report, release. `stop` lets the caller stop it
    (embedded mode's revoke); on a worker a revoke arrives as SIGTERM."""
    claim = rt.records.claim(execution_id, worker, task_id)
    reporter = Reporter(rt.publisher, execution_id, worker=worker)
    if claim == Outcome.CANCEL:
        cancel_unstarted(reporter)
        rt.publisher.flush(30)
        finish(rt, execution_id, tasks)
        return Status.CANCELLED
    if claim != Outcome.OK:
        # Already ended, already running elsewhere, or unknown: never run twice.
        log.info("execution %s not run: %s", execution_id, claim)
        return claim
    stop = stop or TaskStop()
    try:
        with sigterm_stops(stop):
            return _run_claimed(rt, reporter, execution_id, worker, stop)
    finally:
        with lease_kept(rt, execution_id, worker):
            rt.publisher.flush(60)
        rt.publisher.forget(execution_id)
        with contextlib.suppress(Exception):
            finish(rt, execution_id, tasks)


def _run_claimed(
    rt: Runtime, reporter: Reporter, execution_id: str, worker: str, stop: TaskStop
) -> str:
    # Whatever is published from here is masked: the worker's own secrets first, the
    # command's environment's too once it is known.
    reporter.masker = masker_for(rt.settings, {})
    try:
        spec_data = rt.records.spec(execution_id) or {}
        options = ExecutionOptions.model_validate(spec_data.get("options") or {})
        command = str(spec_data.get("command", ""))
        command_type = CommandType(spec_data.get("commandType", CommandType.SCRIPT))
        spec = command_spec(command, command_type, options)
    except Exception as e:
        # A claimed execution always ends: never leave its record 'running'.
        log.exception("execution %s cannot start", execution_id)
        reporter.complete(Status.FAILED, utc_now(), error=f"could not start: {e}")
        return Status.FAILED

    watch = watched(rt, execution_id, worker, stop)
    masker = masker_for(rt.settings, spec.env)
    reporter.masker = masker
    parent_pid = os.getppid()
    started_at = reporter.started(command, command_type, options)
    _mask_spec(rt, execution_id, spec_data, masker)
    executor = executor_for(spec, reporter, rt.settings, masker, pid_recorder(rt, execution_id))
    try:
        with watch(executor):
            result = executor.run()
    finally:
        executor.close()
    return report_result(
        reporter,
        result,
        started_at,
        cancel_confirmed=lambda: cancel_confirmed_in(rt, execution_id),
        parent_pid=parent_pid,
    )


def _mask_spec(rt: Runtime, execution_id: str, spec: dict[str, object], masker: Masker) -> None:
    """The spec holds the command as submitted, for the one worker that runs it: once it
    started, nothing needs it in clear (a command never runs twice)."""
    masked = masker.mask_value(spec)
    if masked != spec:
        with contextlib.suppress(Exception):
            rt.records.update(execution_id, {RecordField.SPEC: json.dumps(masked)})


def watched(
    rt: Runtime, execution_id: str, worker: str, stop: TaskStop
) -> Callable[[Executor], contextlib.AbstractContextManager[None]]:
    """What watches each command of a task: its stop (a revoke's SIGTERM) and the watchdog
    (lease, cancel mark, a dead worker)."""

    @contextlib.contextmanager
    def watch(executor: Executor) -> Iterator[None]:
        with stop.attached(executor), Watchdog(rt, execution_id, worker, executor):
            yield

    return watch


def cancel_confirmed_in(rt: Runtime, execution_id: str) -> bool:
    """Whether a SIGTERM was the user's cancel (the mark in Redis) or something else."""
    try:
        return rt.records.cancel_requested(execution_id)
    except Exception:  # Redis unreachable: trust the signal
        return True
