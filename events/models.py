"""The six events of the spec, the two of fan-out steps (CONTRACT §7), and their envelope,
as immutable pydantic models.

Python uses snake_case; the wire uses camelCase (`by_alias`). Optional fields with no value are
left out of the wire form. Extra fields are allowed on the wire (CONTRACT §1): ours are marked
"extra" below, and unknown ones are kept when decoding.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema
from pydantic.alias_generators import to_camel

from events.errors import EventDecodeError


def utc_now() -> str:
    """The current time as RFC 3339, UTC, microsecond precision."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _check_rfc3339(value: str) -> str:
    try:
        parsed = parse_time(value)
    except ValueError as e:
        raise ValueError(f"not an RFC 3339 timestamp: {value!r}") from e
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp has no time zone: {value!r}")
    return value


Timestamp = Annotated[
    str,
    AfterValidator(_check_rfc3339),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


# The wire models spell these out as literals (the generated JSON Schemas and TypeScript list
# the values inline); tests/test_models.py checks each against its enum in events.vocabulary.
CommandTypeName = Literal["aws_cli", "script", "playbook"]
StreamName = Literal["stdout", "stderr"]
CompleteStatus = Literal["completed", "failed", "timeout", "cancelled"]
HostStatusName = Literal["completed", "failed", "timeout", "cancelled", "skipped", "lost"]


class WireModel(BaseModel):
    # camelCase on the wire, immutable, and extra fields kept (CONTRACT §1 allows them).
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="allow"
    )

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


EXTRA_PREFIX = "Extra (not in the spec): "


def extra(description: str) -> Any:
    """An optional field of ours that the spec does not name (CONTRACT §1 allows extras).

    The description marks it as an extra in the generated JSON Schema and TypeScript, and the
    spec contract test accepts exactly the fields marked so.
    """
    return Field(default=None, description=EXTRA_PREFIX + description)


# The longest timeout an execution or a step may ask for (a week): one bound for every way in.
MAX_TIMEOUT_S = 7 * 24 * 3600


class ExecutionOptions(WireModel):
    working_dir: str | None = None
    timeout: Annotated[int, Field(ge=1, le=MAX_TIMEOUT_S)] | None = None
    aws_profile: str | None = None
    aws_region: str | None = None


class ExecutionStartedPayload(WireModel):
    execution_id: str
    command: str
    command_type: CommandTypeName
    started_at: Timestamp
    options: ExecutionOptions
    worker: str | None = extra("the host of the worker that runs it")


class ExecutionOutputPayload(WireModel):
    execution_id: str
    output: str
    stream: StreamName
    timestamp: Timestamp
    step_id: str | None = extra("the playbook step that wrote this output")
    host: str | None = extra("the host that wrote this output (a step that runs on many hosts)")
    truncated: bool | None = extra(
        "true on the chunk that hit the output cap; no output of this execution follows it"
    )
    dropped_bytes: int | None = extra(
        "UTF-8 bytes of output dropped just before this chunk (publish buffer full while Redis"
        " was unreachable)"
    )


class ExecutionCompletePayload(WireModel):
    execution_id: str
    status: CompleteStatus
    started_at: Timestamp
    completed_at: Timestamp
    duration_ms: Annotated[int, Field(ge=0)]
    exit_code: int | None = None
    error: str | None = None
    worker: str | None = extra("the host of the worker that ran it")


class ExecutionCancelledPayload(WireModel):
    execution_id: str
    cancelled_at: Timestamp
    reason: str
    partial_output: str


class PlaybookStepStartPayload(WireModel):
    execution_id: str
    step_id: str
    step_number: Annotated[int, Field(ge=1)]
    total_steps: Annotated[int, Field(ge=1)]
    step_name: str
    command: str
    attempt: int | None = extra("1 for the first run of the step, 2, 3, ... for its retries")
    worker: str | None = extra("the host of the worker that ran it")
    hosts: list[str] | None = extra(
        "a step that runs on many hosts: the hosts it runs on, resolved when it started"
    )


class PlaybookStepCompletePayload(WireModel):
    execution_id: str
    step_id: str
    step_number: Annotated[int, Field(ge=1)]
    step_name: str
    success: bool
    exit_code: int | None = None
    duration_ms: Annotated[int, Field(ge=0)]
    error: str | None = None
    continue_on_error: bool
    attempts: int | None = extra("how many times the step ran (retries included)")
    worker: str | None = extra("the host of the worker that ran it")
    host_counts: dict[HostStatusName, int] | None = extra(
        "a step that ran on many hosts: how many hosts ended in each status"
    )


class PlaybookHostStartPayload(WireModel):
    """One host of a step that runs on many hosts starts it (CONTRACT §7)."""

    execution_id: str
    step_id: str
    step_number: Annotated[int, Field(ge=1)]
    host: str
    attempt: Annotated[int, Field(ge=1)]


class PlaybookHostCompletePayload(WireModel):
    """One host of a step that runs on many hosts ended it (CONTRACT §7)."""

    execution_id: str
    step_id: str
    step_number: Annotated[int, Field(ge=1)]
    host: str
    status: HostStatusName
    success: bool
    exit_code: int | None = None
    duration_ms: Annotated[int, Field(ge=0)]
    error: str | None = None


Payload = (
    ExecutionStartedPayload
    | ExecutionOutputPayload
    | ExecutionCompletePayload
    | ExecutionCancelledPayload
    | PlaybookStepStartPayload
    | PlaybookStepCompletePayload
    | PlaybookHostStartPayload
    | PlaybookHostCompletePayload
)

# The six events of the spec, and the two of fan-out steps (CONTRACT §1, §7), which a client
# written to the spec ignores.
SPEC_EVENT_TYPES: dict[str, type[WireModel]] = {
    "execution_started": ExecutionStartedPayload,
    "execution_output": ExecutionOutputPayload,
    "execution_complete": ExecutionCompletePayload,
    "execution_cancelled": ExecutionCancelledPayload,
    "playbook_step_start": PlaybookStepStartPayload,
    "playbook_step_complete": PlaybookStepCompletePayload,
}
FLEET_EVENT_TYPES: dict[str, type[WireModel]] = {
    "playbook_host_start": PlaybookHostStartPayload,
    "playbook_host_complete": PlaybookHostCompletePayload,
}
EVENT_TYPES: dict[str, type[WireModel]] = SPEC_EVENT_TYPES | FLEET_EVENT_TYPES
EVENT_NAMES: dict[type[WireModel], str] = {v: k for k, v in EVENT_TYPES.items()}


def _known_event(name: str) -> str:
    if name not in EVENT_TYPES:
        raise ValueError(f"unknown event name: {name!r}")
    return name


# One of the names EVENT_TYPES lists: the eight are written there only.
EventName = Annotated[str, AfterValidator(_known_event)]


def event_name(payload: WireModel) -> str:
    return EVENT_NAMES[type(payload)]


class Envelope(BaseModel):
    """One event on the wire: `{"event", "id", "executionId", "payload"}`."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    event: EventName
    id: Annotated[int, Field(ge=1)]
    execution_id: str
    payload: Payload

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def decode(data: str | bytes | dict[str, Any]) -> Envelope:
    """Decode one wire envelope; raise EventDecodeError on anything else."""
    try:
        raw = orjson.loads(data) if isinstance(data, str | bytes) else data
        if not isinstance(raw, dict):
            raise EventDecodeError("envelope must be a JSON object")
        name = raw.get("event")
        model = EVENT_TYPES.get(name) if isinstance(name, str) else None
        if model is None:
            raise EventDecodeError(f"unknown event name: {name!r}")
        payload = model.model_validate(raw.get("payload"))
        env = Envelope.model_validate({**raw, "payload": payload})
    except EventDecodeError:
        raise
    except (ValueError, TypeError, ValidationError, orjson.JSONDecodeError) as e:
        raise EventDecodeError(f"bad envelope: {e}") from e
    if env.execution_id != getattr(payload, "execution_id", None):
        raise EventDecodeError("envelope executionId differs from payload executionId")
    return env
