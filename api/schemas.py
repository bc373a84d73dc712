"""Request and response bodies of the REST routes (camelCase on the wire)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

from events.errors import InvalidRequestError
from events.models import ExecutionOptions
from events.records import ExecutionRecord

_CAMEL = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class OptionsIn(BaseModel):
    model_config = _CAMEL

    working_dir: str | None = None
    timeout: Annotated[int, Field(strict=True, gt=0, description="seconds")] | None = None
    aws_profile: str | None = None
    aws_region: str | None = None

    def to_options(self) -> ExecutionOptions:
        return ExecutionOptions.model_validate(self.model_dump(exclude_none=True))


PlaybookBody = Annotated[
    Any,
    WithJsonSchema(
        {"anyOf": [{"type": "string"}, {"type": "object"}], "description": "YAML text or object"}
    ),
]
ParamsBody = Annotated[
    Any,
    WithJsonSchema(
        {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}
    ),
]


def check_text(value: Any, field: str) -> None:
    """Refuse strings that cannot be UTF-8 (lone surrogates from JSON `\\ud800` escapes)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidRequestError(field, "must be valid Unicode text") from e
    elif isinstance(value, dict):
        for k, v in value.items():
            check_text(k, field)
            check_text(v, f"{field}.{k}" if isinstance(k, str) and k.isprintable() else field)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_text(v, f"{field}[{i}]")


class _CommandRequest(BaseModel):
    model_config = _CAMEL

    command_type: Literal["aws_cli", "script"]
    command: Annotated[str, Field(pattern=r"\S", description="not blank")]
    options: OptionsIn | None = None

    def check(self) -> None:
        check_text(self.command, "command")
        if self.options is not None:
            check_text(self.options.model_dump(by_alias=True), "options")


# One model per commandType: OpenAPI's discriminator mapping is then one to one (schemathesis,
# among others, misreads a mapping of two values to one schema).
class AwsCliRequest(_CommandRequest):
    """Run an AWS CLI command (`aws ...`)."""

    command_type: Literal["aws_cli"]


class ScriptRequest(_CommandRequest):
    """Run a shell script."""

    command_type: Literal["script"]


class PlaybookRequest(BaseModel):
    """Run a playbook given as YAML text or as an object, with its params."""

    model_config = _CAMEL

    command_type: Literal["playbook"]
    playbook: PlaybookBody
    params: ParamsBody = None

    def check(self) -> None:
        """What the JSON types cannot say; raises InvalidRequestError naming the field."""
        if not isinstance(self.playbook, str | dict):
            raise InvalidRequestError("playbook", "must be YAML text or an object")
        check_text(self.playbook, "playbook")
        check_text(self.params, "params")
        if self.params is not None and not isinstance(self.params, dict):
            raise InvalidRequestError("params", "must be an object")
        for key, value in (self.params or {}).items():
            if not isinstance(value, str | int | float | bool):
                raise InvalidRequestError(f"params.{key}", "must be a string, number or boolean")

    def param_strings(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in (self.params or {}).items():
            out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return out


SubmitRequest = Annotated[
    AwsCliRequest | ScriptRequest | PlaybookRequest, Field(discriminator="command_type")
]
COMMAND_TYPES = ("aws_cli", "script", "playbook")


class SubmitResponse(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    execution_id: str


class CancelResponse(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    execution_id: str
    cancel_requested: bool = True


class ExecutionList(BaseModel):
    executions: list[ExecutionRecord]


class TicketResponse(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    ticket: str
    expires_in_s: int


class ErrorBody(BaseModel):
    detail: str


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    detail: str | None = None
