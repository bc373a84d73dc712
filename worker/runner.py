"""Run one execution from start to its single `execution_complete`.

`run_command` is shared by the Celery task and the embedded mode: started, output, then
cancelled + complete or complete. `run_queued_command` adds what a fleet needs: claiming the
execution in Redis (so it runs once, and never after a cancel), a watchdog, and releasing it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from events.lifecycle import Reporter
from events.masking import Masker
from events.models import CommandType, ExecutionOptions, utc_now
from events.settings import Settings
from worker.commands import command_spec
from worker.executor import CommandSpec, Executor, RunResult, StopReason
from worker.finish import StepSender, finish
from worker.proctree import alive
from worker.runtime import Runtime
from worker.watchdog import Watchdog, lease_kept

log = logging.getLogger(__name__)

CANCEL_REASON = "User requested cancellation"
WORKER_LOST_ERROR = "worker lost: the worker process running this execution died"


def masker_for(settings: Settings, env: Mapping[str, str]) -> Masker:
    names = settings.secret_names
    return Masker([*(env.get(n, "") for n in names), *(os.environ.get(n, "") for n in names)])


def executor_for(
    spec: CommandSpec,
    reporter: Reporter,
    settings: Settings,
    masker: Masker,
    on_start: Callable[[int], None] | None = None,
) -> Executor:
    return Executor(
        spec,
        reporter.output,
        masker=masker,
        flush_interval_ms=settings.flush_interval_ms,
        max_chunk_bytes=settings.max_chunk_bytes,
        kill_grace_s=settings.kill_grace_s,
        partial_output_chars=settings.partial_output_bytes,
        on_start=on_start,
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
    if result.status == "cancelled":
        reporter.cancelled(CANCEL_REASON, result.partial_output)
        reporter.complete("cancelled", started_at, wait=wait)
        return "cancelled"
    status = result.status
    assert status in ("completed", "failed", "timeout")
    exit_code = result.exit_code if status in ("completed", "failed") else None
    reporter.complete(status, started_at, exit_code=exit_code, error=result.error, wait=wait)  # type: ignore[arg-type]
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


def parent_died(parent_pid: int, wait_s: float = 1.0) -> bool:
    """Whether the worker's main process died. The parent-death SIGTERM comes when the thread
    that forked us exits, possibly before the process is gone and we are re-parented: give it
    a moment before deciding it was a shutdown."""
    deadline = time.monotonic() + wait_s
    while True:
        if os.getppid() != parent_pid or not alive(parent_pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def run_command(
    reporter: Reporter,
    settings: Settings,
    *,
    command: str,
    command_type: CommandType,
    options: ExecutionOptions,
    spec: CommandSpec,
    watch: Callable[[Executor], contextlib.AbstractContextManager[Any]],
    cancel_confirmed: Callable[[], bool],
    on_start: Callable[[int], None] | None = None,
) -> str:
    masker = masker_for(settings, spec.env)
    parent_pid = os.getppid()
    started_at = reporter.started(masker.mask(command), command_type, options)
    executor = executor_for(spec, reporter, settings, masker, on_start)
    try:
        with watch(executor), sigterm_stops(executor):
            result = executor.run()
    finally:
        executor.close()
    return report_result(
        reporter, result, started_at, cancel_confirmed=cancel_confirmed, parent_pid=parent_pid
    )


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
    reporter.complete("cancelled", at, wait=wait)


def pid_recorder(rt: Runtime, execution_id: str) -> Callable[[int], None]:
    """Record the command's and the pool process's pids (for the reaper of this host)."""

    def on_start(pid: int) -> None:
        with contextlib.suppress(Exception):
            rt.records.update(execution_id, {"pid": pid, "workerPid": os.getpid()})

    return on_start


def run_queued_command(
    rt: Runtime, execution_id: str, *, worker: str, task_id: str, send: StepSender
) -> str:
    """The Celery task's body: claim, run, report, release."""
    claim = rt.records.claim(execution_id, worker, task_id)
    reporter = Reporter(rt.publisher, execution_id, worker=worker)
    if claim == "cancel":
        cancel_unstarted(reporter)
        rt.publisher.flush(30)
        finish(rt, execution_id, send)
        return "cancelled"
    if claim != "ok":
        # Already ended, already running elsewhere, or unknown: never run twice.
        log.info("execution %s not run: %s", execution_id, claim)
        return claim
    stop = TaskStop()
    try:
        with sigterm_stops(stop):
            try:
                spec_data = rt.records.spec(execution_id) or {}
                options = ExecutionOptions.model_validate(spec_data.get("options") or {})
                command = str(spec_data.get("command", ""))
                command_type = spec_data.get("commandType", "script")
                spec = command_spec(command, command_type, options)
            except Exception as e:
                # A claimed execution always ends: never leave its record 'running'.
                log.exception("execution %s cannot start", execution_id)
                reporter.complete("failed", utc_now(), error=f"could not start: {e}")
                return "failed"

            @contextlib.contextmanager
            def watch(executor: Executor) -> Iterator[None]:
                with stop.attached(executor), Watchdog(rt, execution_id, worker, executor):
                    yield

            return run_command(
                reporter,
                rt.settings,
                command=command,
                command_type=command_type,
                options=options,
                spec=spec,
                watch=watch,
                cancel_confirmed=lambda: cancel_confirmed_in(rt, execution_id),
                on_start=pid_recorder(rt, execution_id),
            )
    finally:
        with lease_kept(rt, execution_id, worker):
            rt.publisher.flush(60)
        rt.publisher.forget(execution_id)
        with contextlib.suppress(Exception):
            finish(rt, execution_id, send)


def cancel_confirmed_in(rt: Runtime, execution_id: str) -> bool:
    """Whether a SIGTERM was the user's cancel (the mark in Redis) or something else."""
    try:
        return rt.records.cancel_requested(execution_id)
    except Exception:  # Redis unreachable: trust the signal
        return True
