"""The execution record: what GET /api/executions/{id} shows, and how it is read from its hash.

The hash (events.keys.Keys.record) holds the record's own fields and the bookkeeping of the
publish and transition scripts (events.vocabulary.RecordField says what each one is); the
RecordStore (events.record_store) writes it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from events.vocabulary import CommandType, HostStatus, RecordField, Status, StepStatus, step_field

F = RecordField


class HostRun(BaseModel):
    """One host of a fan-out step in the record's step entry (CONTRACT §7)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    host: str
    status: HostStatus
    exit_code: int | None = None
    duration_ms: int | None = None


class StepState(BaseModel):
    """What the step events write over a step of the record (field `step:<n>`, JSON)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    status: StepStatus = StepStatus.PENDING
    exit_code: int | None = None
    duration_ms: int | None = None
    worker: str | None = None
    attempts: int | None = None
    error: str | None = None
    started_at: str | None = None
    hosts: list[HostRun] | None = None

    def field_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)


class StepRecord(StepState):
    """A step of the record: its id and name, from the playbook, and its state."""

    step_id: str
    step_name: str


class ExecutionRecord(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    execution_id: str
    command: str
    command_type: CommandType
    status: Status
    options: dict[str, Any] = {}
    queued_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    duration_ms: int | None = None
    exit_code: int | None = None
    error: str | None = None
    worker: str | None = None
    steps: list[StepRecord] | None = None
    output_truncated: bool | None = None
    cancel_requested: bool | None = None
    playbook_name: str | None = None
    playbook_version: int | None = None
    rerun_of: str | None = None
    submitted_by: str | None = None
    cancelled_by: str | None = None
    schedule_id: str | None = None
    scheduled_at: str | None = None

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    @property
    def terminal(self) -> bool:
        return self.status.terminal


def as_str(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def decode_hash(data: Mapping[Any, Any]) -> dict[str, str]:
    """A hash as Redis returns it (bytes) as text."""
    return {as_str(k): as_str(v) for k, v in data.items()}


def _int_or_none(v: str | None) -> int | None:
    return None if v is None or v == "" else int(v)


def record_from_hash(raw: Mapping[str, str]) -> ExecutionRecord:
    steps: list[StepRecord] | None = None
    if raw.get(F.STEPS):
        # The initial list, each step overlaid by its `step:<n>` field from the step events.
        steps = []
        for n, base in enumerate(json.loads(raw[F.STEPS]), start=1):
            over = raw.get(step_field(n))
            steps.append(StepRecord.model_validate({**base, **(json.loads(over) if over else {})}))
    return ExecutionRecord(
        execution_id=raw.get(F.EXECUTION_ID, ""),
        command=raw.get(F.COMMAND, ""),
        command_type=CommandType(raw.get(F.COMMAND_TYPE) or CommandType.SCRIPT),
        status=Status(raw[F.STATUS]),
        options=json.loads(raw.get(F.OPTIONS) or "{}"),
        queued_at=raw.get(F.QUEUED_AT) or None,
        started_at=raw.get(F.STARTED_AT) or None,
        completed_at=raw.get(F.COMPLETED_AT) or None,
        duration_ms=_int_or_none(raw.get(F.DURATION_MS)),
        exit_code=_int_or_none(raw.get(F.EXIT_CODE)),
        error=raw.get(F.ERROR) or None,
        worker=raw.get(F.WORKER) or None,
        steps=steps,
        output_truncated=True if raw.get(F.OUTPUT_TRUNCATED) == "1" else None,
        cancel_requested=True if raw.get(F.CANCEL_REQUESTED) == "1" else None,
        playbook_name=raw.get(F.PLAYBOOK_NAME) or None,
        playbook_version=_int_or_none(raw.get(F.PLAYBOOK_VERSION)),
        rerun_of=raw.get(F.RERUN_OF) or None,
        submitted_by=raw.get(F.SUBMITTED_BY) or None,
        cancelled_by=raw.get(F.CANCELLED_BY) or None,
        schedule_id=raw.get(F.SCHEDULE_ID) or None,
        scheduled_at=raw.get(F.SCHEDULED_AT) or None,
    )
