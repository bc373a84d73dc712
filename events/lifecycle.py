"""Build the events of one execution and the record fields each one changes.

Everything that publishes (worker tasks, playbook steps, the cancel of a queued execution, the
reaper, the embedded runner) goes through `Reporter`, so an event and its record update never
disagree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from events.models import (
    CommandType,
    CompleteStatus,
    ExecutionCancelledPayload,
    ExecutionCompletePayload,
    ExecutionOptions,
    ExecutionOutputPayload,
    ExecutionStartedPayload,
    PlaybookStepCompletePayload,
    PlaybookStepStartPayload,
    StreamName,
    WireModel,
    parse_time,
    utc_now,
)


class Sink(Protocol):
    """Where events go: events.publisher.Publisher, or the embedded in-memory bus."""

    def publish(
        self,
        payload: WireModel,
        *,
        record: Mapping[str, str | int] | None = None,
        wait: bool = False,
    ) -> int | None: ...


def duration_ms(started_at: str, completed_at: str) -> int:
    return max(0, int((parse_time(completed_at) - parse_time(started_at)).total_seconds() * 1000))


class Reporter:
    def __init__(self, sink: Sink, execution_id: str, *, worker: str | None = None) -> None:
        self.sink = sink
        self.execution_id = execution_id
        self.worker = worker
        self.step_id: str | None = None
        self.step_started_at: str | None = None

    def started(self, command: str, command_type: CommandType, options: ExecutionOptions) -> str:
        at = utc_now()
        record: dict[str, str | int] = {"status": "running", "startedAt": at}
        if self.worker:
            record["worker"] = self.worker
        self.sink.publish(
            ExecutionStartedPayload(
                execution_id=self.execution_id,
                command=command,
                command_type=command_type,
                started_at=at,
                options=options,
                worker=self.worker,
            ),
            record=record,
        )
        return at

    def output(self, stream: StreamName, text: str) -> None:
        self.sink.publish(
            ExecutionOutputPayload(
                execution_id=self.execution_id,
                output=text,
                stream=stream,
                timestamp=utc_now(),
                step_id=self.step_id,
            )
        )

    def cancelled(self, reason: str, partial_output: str, *, wait: bool = False) -> None:
        self.sink.publish(
            ExecutionCancelledPayload(
                execution_id=self.execution_id,
                cancelled_at=utc_now(),
                reason=reason,
                partial_output=partial_output,
            ),
            wait=wait,
        )

    def complete(
        self,
        status: CompleteStatus,
        started_at: str,
        *,
        exit_code: int | None = None,
        error: str | None = None,
        wait: bool = False,
    ) -> None:
        at = utc_now()
        ms = duration_ms(started_at, at)
        record: dict[str, str | int] = {"status": status, "completedAt": at, "durationMs": ms}
        if exit_code is not None:
            record["exitCode"] = exit_code
        if error is not None:
            record["error"] = error
        self.sink.publish(
            ExecutionCompletePayload(
                execution_id=self.execution_id,
                status=status,
                started_at=started_at,
                completed_at=at,
                duration_ms=ms,
                exit_code=exit_code,
                error=error,
                worker=self.worker,
            ),
            record=record,
            wait=wait,
        )

    def step_start(
        self,
        *,
        step_id: str,
        step_number: int,
        total_steps: int,
        step_name: str,
        command: str,
        attempt: int,
    ) -> None:
        self.step_id = step_id
        self.step_started_at = utc_now()
        step: dict[str, Any] = {
            "status": "running",
            "attempts": attempt,
            "startedAt": self.step_started_at,
        }
        if self.worker:
            step["worker"] = self.worker
        self.sink.publish(
            PlaybookStepStartPayload(
                execution_id=self.execution_id,
                step_id=step_id,
                step_number=step_number,
                total_steps=total_steps,
                step_name=step_name,
                command=command,
                attempt=attempt,
                worker=self.worker,
            ),
            record={f"step:{step_number}": json.dumps(step)},
        )

    def step_complete(
        self,
        *,
        step_id: str,
        step_number: int,
        step_name: str,
        success: bool,
        exit_code: int | None,
        duration_ms: int,
        error: str | None,
        continue_on_error: bool,
        attempts: int,
        cancelled: bool = False,
        timed_out: bool = False,
        started_at: str | None = None,
    ) -> None:
        """The step's record status is completed, failed, cancelled or timeout (a failure whose
        last attempt hit the step's timeout); `success` alone goes on the wire."""
        status = "completed" if success else ("cancelled" if cancelled else "failed")
        if not success and timed_out and not cancelled:
            status = "timeout"
        step: dict[str, Any] = {"status": status, "durationMs": duration_ms, "attempts": attempts}
        started_at = started_at or self.step_started_at
        if started_at is not None:
            step["startedAt"] = started_at
        if exit_code is not None:
            step["exitCode"] = exit_code
        if error is not None:
            step["error"] = error
        if self.worker:
            step["worker"] = self.worker
        self.sink.publish(
            PlaybookStepCompletePayload(
                execution_id=self.execution_id,
                step_id=step_id,
                step_number=step_number,
                step_name=step_name,
                success=success,
                exit_code=exit_code,
                duration_ms=duration_ms,
                error=error,
                continue_on_error=continue_on_error,
                attempts=attempts,
                worker=self.worker,
            ),
            record={f"step:{step_number}": json.dumps(step)},
        )
        self.step_id = None
        self.step_started_at = None
