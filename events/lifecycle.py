"""Build the events of one execution and the record fields each one changes.

Everything that publishes (worker tasks, playbook steps, the cancel of a queued execution, the
reaper, the embedded runner) goes through `Reporter`, so an event and its record update never
disagree. With a `masker` (the secret values of the execution's environment, set by the worker
once it knows them), every string of every event and of every record field it writes is masked:
the command (also the record's, written in clear at submission by a relay that cannot know the
workers' secrets), errors, reasons, options, not only output.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Protocol, cast

from pydantic import BaseModel

from events.masking import Masker
from events.models import (
    ExecutionCancelledPayload,
    ExecutionCompletePayload,
    ExecutionOptions,
    ExecutionOutputPayload,
    ExecutionStartedPayload,
    PlaybookHostCompletePayload,
    PlaybookHostStartPayload,
    PlaybookStepCompletePayload,
    PlaybookStepStartPayload,
    StreamName,
    WireModel,
    parse_time,
    utc_now,
)
from events.records import HostRun, StepState
from events.vocabulary import (
    CommandType,
    HostStatus,
    RecordField,
    Status,
    StepStatus,
    step_field,
)

F = RecordField


class Sink(Protocol):
    """Where events go: an events.publisher.Publisher (tests may record them instead)."""

    def publish(
        self,
        payload: WireModel,
        *,
        record: Mapping[str, str | int] | None = None,
        wait: bool = False,
    ) -> int | None: ...

    def output_idle(self, execution_id: str) -> bool: ...


def duration_ms(started_at: str, completed_at: str) -> int:
    return max(0, int((parse_time(completed_at) - parse_time(started_at)).total_seconds() * 1000))


def mask_model(model: BaseModel, masker: Masker, skip: tuple[str, ...] = ()) -> BaseModel:
    """A copy of `model` with every string inside it masked (nested models, lists, dicts);
    the fields named in `skip` are left as they are."""
    changes: dict[str, Any] = {}
    for name in type(model).model_fields:
        if name in skip:
            continue
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            masked: Any = mask_model(value, masker)
        else:
            masked = masker.mask_value(value)
        if masked != value:
            changes[name] = masked
    return model.model_copy(update=changes) if changes else model


@dataclass(eq=False, repr=False)
class Reporter:
    sink: Sink
    execution_id: str
    _: KW_ONLY
    worker: str | None = None
    masker: Masker | None = None
    # The running step's, while one runs: its output events carry its id.
    step_id: str | None = field(default=None, init=False)
    step_started_at: str | None = field(default=None, init=False)
    # The host whose run of a fan-out step this reporter publishes: its output carries it.
    host: str | None = None

    def _publish(
        self,
        payload: WireModel,
        *,
        record: Mapping[str, str | int] | None = None,
        wait: bool = False,
        premasked: tuple[str, ...] = (),
    ) -> None:
        """Publish with every string masked, but the fields in `premasked` (the output the
        coalescer already masked, also across reads)."""
        m = self.masker
        if m:
            payload = cast(WireModel, mask_model(payload, m, premasked))
            if record is not None:
                record = {k: m.mask(v) if isinstance(v, str) else v for k, v in record.items()}
        self.sink.publish(payload, record=record, wait=wait)

    def _mask(self, text: str | None) -> str | None:
        return text if text is None or not self.masker else self.masker.mask(text)

    def started(self, command: str, command_type: CommandType, options: ExecutionOptions) -> str:
        at = utc_now()
        # The command again, masked: the record holds it in clear since submission.
        record: dict[str, str | int] = {
            F.STATUS: Status.RUNNING,
            F.STARTED_AT: at,
            F.COMMAND: command,
        }
        if self.worker:
            record[F.WORKER] = self.worker
        if self.masker:
            masked = mask_model(options, self.masker)
            if masked != options:  # a secret in an option (a path): the record's copy too
                record[F.OPTIONS] = json.dumps(cast(ExecutionOptions, masked).wire())
        self._publish(
            ExecutionStartedPayload(
                execution_id=self.execution_id,
                command=command,
                command_type=command_type.value,
                started_at=at,
                options=options,
                worker=self.worker,
            ),
            record=record,
        )
        return at

    def output(self, stream: StreamName, text: str) -> None:
        """Output written by us (a retry line, a message): masked here."""
        self._output(stream, text, ())

    def masked_output(self, stream: StreamName, text: str) -> None:
        """Output the executor's coalescer masked already (also across reads and streams)."""
        self._output(stream, text, ("output",))

    def output_idle(self) -> bool:
        """Nothing of this execution waits for Redis (the coalescer's "nothing in flight")."""
        return self.sink.output_idle(self.execution_id)

    def _output(self, stream: StreamName, text: str, premasked: tuple[str, ...]) -> None:
        self._publish(
            ExecutionOutputPayload(
                execution_id=self.execution_id,
                output=text,
                stream=stream,
                timestamp=utc_now(),
                step_id=self.step_id,
                host=self.host,
            ),
            premasked=premasked,
        )

    def cancelled(self, reason: str, partial_output: str, *, wait: bool = False) -> None:
        self._publish(
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
        status: Status,
        started_at: str,
        *,
        exit_code: int | None = None,
        error: str | None = None,
        wait: bool = False,
    ) -> None:
        assert status.terminal, status
        at = utc_now()
        ms = duration_ms(started_at, at)
        record: dict[str, str | int] = {F.STATUS: status, F.COMPLETED_AT: at, F.DURATION_MS: ms}
        if exit_code is not None:
            record[F.EXIT_CODE] = exit_code
        if error is not None:
            record[F.ERROR] = error
        self._publish(
            ExecutionCompletePayload(
                execution_id=self.execution_id,
                status=status.value,
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

    def _step(self, step_number: int, step_id: str, step_name: str) -> dict[str, Any]:
        """The fields that name a step in its events."""
        return {
            "execution_id": self.execution_id,
            "step_number": step_number,
            "step_id": step_id,
            "step_name": step_name,
        }

    def _publish_step(self, payload: WireModel, step_number: int, state: StepState) -> None:
        """A step event, with the step's state written over its `step:<n>` record field."""
        self._publish(payload, record={step_field(step_number): state.field_json()})

    def step_start(
        self,
        *,
        step_id: str,
        step_number: int,
        total_steps: int,
        step_name: str,
        command: str,
        attempt: int,
        hosts: list[str] | None = None,
    ) -> None:
        """`hosts`: a fan-out step's frozen host list (its worker is then the coordinator)."""
        self.step_id = step_id
        self.step_started_at = utc_now()
        state = StepState(
            status=StepStatus.RUNNING,
            attempts=attempt,
            started_at=self.step_started_at,
            worker=self.worker,
        )
        payload = PlaybookStepStartPayload(
            **self._step(step_number, step_id, step_name),
            total_steps=total_steps,
            command=command,
            attempt=attempt,
            worker=self.worker,
            hosts=hosts,
        )
        self._publish_step(payload, step_number, state)

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
        hosts: list[HostRun] | None = None,
    ) -> None:
        """The step's record status is completed, failed, cancelled or timeout (a failure whose
        last attempt hit the step's timeout); `success` alone goes on the wire."""
        error = self._mask(error)  # before it goes into the step's JSON in the record
        status = StepStatus.COMPLETED
        if not success:
            status = StepStatus.CANCELLED if cancelled else StepStatus.FAILED
            if timed_out and not cancelled:
                status = StepStatus.TIMEOUT
        outcome: dict[str, Any] = {"exit_code": exit_code, "error": error, "worker": self.worker}
        state = StepState(
            status=status,
            duration_ms=duration_ms,
            attempts=attempts,
            started_at=started_at or self.step_started_at,
            hosts=hosts,
            **outcome,
        )
        payload = PlaybookStepCompletePayload(
            **self._step(step_number, step_id, step_name),
            **outcome,
            success=success,
            duration_ms=duration_ms,
            continue_on_error=continue_on_error,
            attempts=attempts,
            host_counts=None if hosts is None else host_counts(hosts),
        )
        self._publish_step(payload, step_number, state)
        self.step_id = None
        self.step_started_at = None

    def host_start(self, *, step_id: str, step_number: int, attempt: int) -> None:
        """This reporter's host starts its run of a fan-out step; its output carries the step
        and the host from now on."""
        assert self.host is not None
        self.step_id = step_id
        self._publish(
            PlaybookHostStartPayload(
                execution_id=self.execution_id,
                step_id=step_id,
                step_number=step_number,
                host=self.host,
                attempt=attempt,
            )
        )

    def host_complete(
        self,
        *,
        step_id: str,
        step_number: int,
        host: str,
        status: HostStatus,
        exit_code: int | None,
        duration_ms: int,
        error: str | None,
        wait: bool = False,
    ) -> None:
        """A host of a fan-out step ended it (also a host that never started: skipped,
        offline, lost, published by whoever noticed)."""
        self._publish(
            PlaybookHostCompletePayload(
                execution_id=self.execution_id,
                step_id=step_id,
                step_number=step_number,
                host=host,
                status=status.value,
                success=status is HostStatus.COMPLETED,
                exit_code=exit_code,
                duration_ms=duration_ms,
                error=error,
            ),
            wait=wait,
        )


def host_counts(hosts: list[HostRun]) -> dict[str, int]:
    """`hostCounts` of a fan-out step's playbook_step_complete: hosts per status."""
    counts: dict[str, int] = {}
    for run in hosts:
        counts[run.status.value] = counts.get(run.status.value, 0) + 1
    return counts
