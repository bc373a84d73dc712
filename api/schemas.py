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


class SubmitRequest(BaseModel):
    """A command (`aws_cli`, `script`) or a playbook to run."""

    model_config = _CAMEL

    command_type: Literal["aws_cli", "script", "playbook"]
    command: str | None = None
    options: OptionsIn | None = None
    playbook: PlaybookBody = None
    params: ParamsBody = None

    def check(self) -> None:
        """What the types cannot say; raises InvalidRequestError naming the field."""
        if self.command_type == "playbook":
            if self.command is not None:
                raise InvalidRequestError("command", "not allowed with commandType playbook")
            if self.options is not None:
                raise InvalidRequestError(
                    "options", "not allowed with commandType playbook (set them in the playbook)"
                )
            if self.playbook is None:
                raise InvalidRequestError("playbook", "is required with commandType playbook")
            if not isinstance(self.playbook, str | dict):
                raise InvalidRequestError("playbook", "must be YAML text or an object")
            if self.params is not None and not isinstance(self.params, dict):
                raise InvalidRequestError("params", "must be an object")
            for key, value in (self.params or {}).items():
                if not isinstance(value, str | int | float | bool):
                    raise InvalidRequestError(
                        f"params.{key}", "must be a string, number or boolean"
                    )
            return
        for name in ("playbook", "params"):
            if getattr(self, name) is not None:
                raise InvalidRequestError(name, f"not allowed with commandType {self.command_type}")
        if self.command is None or not self.command.strip():
            raise InvalidRequestError("command", "is required and must not be empty")

    def param_strings(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in (self.params or {}).items():
            out[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
        return out


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
