"""The six events of the spec and their wire envelope, as immutable pydantic models.

Python uses snake_case; the wire uses camelCase (`by_alias`). Optional fields with no value are
left out of the wire form. Extra fields are allowed on the wire (CONTRACT §1): ours are marked
"extra" below, and unknown ones are kept when decoding.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from enum import StrEnum
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


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self not in (Status.QUEUED, Status.RUNNING)


TERMINAL_STATUSES = frozenset(s.value for s in Status if s.terminal)

CommandType = Literal["aws_cli", "script", "playbook"]
StreamName = Literal["stdout", "stderr"]
CompleteStatus = Literal["completed", "failed", "timeout", "cancelled"]


class WireModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        extra="allow",
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


class ExecutionOptions(WireModel):
    working_dir: str | None = None
    timeout: Annotated[int, Field(ge=1)] | None = None
    aws_profile: str | None = None
    aws_region: str | None = None


class ExecutionStartedPayload(WireModel):
    execution_id: str
    command: str
    command_type: CommandType
    started_at: Timestamp
    options: ExecutionOptions
    worker: str | None = extra("the host of the worker that runs it")


class ExecutionOutputPayload(WireModel):
    execution_id: str
    output: str
    stream: StreamName
    timestamp: Timestamp
    step_id: str | None = extra("the playbook step that wrote this output")
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


Payload = (
    ExecutionStartedPayload
    | ExecutionOutputPayload
    | ExecutionCompletePayload
    | ExecutionCancelledPayload
    | PlaybookStepStartPayload
    | PlaybookStepCompletePayload
)

EVENT_TYPES: dict[str, type[WireModel]] = {
    "execution_started": ExecutionStartedPayload,
    "execution_output": ExecutionOutputPayload,
    "execution_complete": ExecutionCompletePayload,
    "execution_cancelled": ExecutionCancelledPayload,
    "playbook_step_start": PlaybookStepStartPayload,
    "playbook_step_complete": PlaybookStepCompletePayload,
}
EVENT_NAMES: dict[type[WireModel], str] = {v: k for k, v in EVENT_TYPES.items()}
EventName = Literal[
    "execution_started",
    "execution_output",
    "execution_complete",
    "execution_cancelled",
    "playbook_step_start",
    "playbook_step_complete",
]


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

    def to_json(self) -> str:
        return json.dumps(self.wire(), separators=(",", ":"), ensure_ascii=False)


def payload_json(payload: WireModel) -> str:
    """The payload's wire JSON. Output chunks (up to 64 KiB of text, every line's newline to
    escape) go through orjson at twice pydantic's speed; the result is the same text."""
    if isinstance(payload, ExecutionOutputPayload):
        with contextlib.suppress(orjson.JSONEncodeError):
            data: bytes = orjson.dumps(payload.model_dump(by_alias=True, exclude_none=True))
            return data.decode()
    return payload.model_dump_json(by_alias=True, exclude_none=True)


def encode_parts(event: str, execution_id: str, payload: WireModel) -> tuple[str, str]:
    """The envelope's JSON split around its `id`, which the publisher fills in Redis.

    Key order is fixed (`event`, `id`, `executionId`, `payload`) so that readers can take the
    event name and id from the first bytes without parsing a 64 KiB payload.
    """
    body = payload_json(payload)
    head = '{"event":' + json.dumps(event) + ',"id":'
    tail = ',"executionId":' + json.dumps(execution_id) + ',"payload":' + body + "}"
    return head, tail


def decode(data: str | bytes | dict[str, Any]) -> Envelope:
    """Decode one wire envelope; raise EventDecodeError on anything else."""
    try:
        raw = json.loads(data) if isinstance(data, str | bytes) else data
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
    except (ValueError, TypeError, ValidationError) as e:
        raise EventDecodeError(f"bad envelope: {e}") from e
    if env.execution_id != getattr(payload, "execution_id", None):
        raise EventDecodeError("envelope executionId differs from payload executionId")
    return env


_HEAD_PREFIX = '{"event":"'


class RawEvent:
    """An envelope as it travels: its id and name read from the head, the JSON left as is.

    The relay and the CLI pass envelopes through without parsing the payload; `decode()` does
    the full check when a consumer needs the fields.
    """

    __slots__ = ("data", "event", "id")

    def __init__(self, id: int, event: str, data: str) -> None:
        self.id = id
        self.event = event
        self.data = data

    @classmethod
    def from_json(cls, data: str | bytes) -> RawEvent:
        text = data.decode() if isinstance(data, bytes) else data
        # Our publisher writes `{"event":"<name>","id":<n>,...`; anything else is parsed fully.
        if text.startswith(_HEAD_PREFIX):
            end = text.find('"', len(_HEAD_PREFIX))
            id_start = end + 7  # len('","id":') == 7
            id_end = text.find(",", id_start)
            if end > 0 and text[end:id_start] == '","id":' and id_end > id_start:
                try:
                    return cls(int(text[id_start:id_end]), text[len(_HEAD_PREFIX) : end], text)
                except ValueError:
                    pass
        env = decode(text)
        return cls(env.id, env.event, text)

    @property
    def terminal(self) -> bool:
        return self.event == "execution_complete"

    def decode(self) -> Envelope:
        return decode(self.data)

    def __repr__(self) -> str:
        return f"RawEvent(id={self.id}, event={self.event!r})"
