"""Request and response bodies of the REST routes (camelCase on the wire)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, WithJsonSchema
from pydantic.alias_generators import to_camel

from events.db.playbooks import MAX_VERSION
from events.db.tokens import MAX_EXPIRES_IN_S
from events.errors import InvalidRequestError
from events.models import MAX_TIMEOUT_S, ExecutionOptions
from events.params import ParamType
from events.requests import command_playbook
from events.rerun import RerunHosts
from events.vocabulary import Role

_CAMEL = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class OptionsIn(BaseModel):
    model_config = _CAMEL

    working_dir: str | None = None
    timeout: (
        Annotated[int, Field(strict=True, gt=0, le=MAX_TIMEOUT_S, description="seconds")] | None
    ) = None
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


class TargetsIn(BaseModel):
    """Run the command on many hosts (CONTRACT §7): exactly one of the three, checked with
    the playbook it runs as (events.requests.command_playbook)."""

    model_config = _CAMEL

    queue: str | None = None
    hosts: list[str] | None = None
    labels: dict[str, str] | None = None

    def wire(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


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
    targets: TargetsIn | None = None

    def check(self) -> None:
        check_text(self.command, "command")
        if self.options is not None:
            check_text(self.options.model_dump(by_alias=True), "options")
        if self.targets is not None:
            check_text(self.targets.wire(), "targets")

    def as_playbook(self) -> dict[str, Any] | None:
        """With `targets`, the one-step playbook the command runs as (CONTRACT §7)."""
        if self.targets is None:
            return None
        options = self.options.model_dump(by_alias=True) if self.options is not None else {}
        return command_playbook(self.command, options, self.targets.wire())


# One model per commandType: OpenAPI's discriminator mapping is then one to one (schemathesis,
# among others, misreads a mapping of two values to one schema).
class AwsCliRequest(_CommandRequest):
    """Run an AWS CLI command (`aws ...`)."""

    command_type: Literal["aws_cli"]


class ScriptRequest(_CommandRequest):
    """Run a shell script."""

    command_type: Literal["script"]


class PlaybookRequest(BaseModel):
    """Run a playbook given as YAML text or as an object, or a saved one by `playbookName`
    (its latest version, or `version`; `commandType` may then be left out), with its params."""

    model_config = _CAMEL

    command_type: Literal["playbook"] = "playbook"
    playbook: PlaybookBody = None
    playbook_name: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    version: (
        Annotated[int, Field(strict=True, ge=1, le=MAX_VERSION, description="of playbookName")]
        | None
    ) = None
    params: ParamsBody = None

    def check(self) -> None:
        """What the JSON types cannot say; raises InvalidRequestError naming the field."""
        if self.playbook_name is not None:
            if self.playbook is not None:
                raise InvalidRequestError("playbookName", "give either playbook or playbookName")
        elif self.version is not None:
            raise InvalidRequestError("version", "is for a saved playbook (playbookName)")
        elif self.playbook is None:
            raise InvalidRequestError("playbook", "is required")
        elif not isinstance(self.playbook, str | dict):
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


def _submit_kind(body: Any) -> Any:
    """The submit body's commandType; a body naming a saved playbook may leave it out."""
    if isinstance(body, dict):
        kind = body.get("commandType", body.get("command_type"))
        if kind is None and ("playbookName" in body or "playbook_name" in body):
            return "playbook"
        return kind
    return getattr(body, "command_type", None)


SubmitRequest = Annotated[
    Annotated[AwsCliRequest, Tag("aws_cli")]
    | Annotated[ScriptRequest, Tag("script")]
    | Annotated[PlaybookRequest, Tag("playbook")],
    Discriminator(_submit_kind),
]
COMMAND_TYPES = ("aws_cli", "script", "playbook")


class SubmitResponse(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    execution_id: str


class RerunRequest(BaseModel):
    """What a rerun runs again (CONTRACT §7): on the first rerun step, the hosts that did not
    succeed there (the default), or all of its targets."""

    model_config = ConfigDict(extra="forbid")

    hosts: RerunHosts = RerunHosts.FAILED
    # The old run's secret params, again: their values were never stored (CONTRACT §10).
    params: dict[str, str] | None = None


class CancelResponse(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    execution_id: str
    cancel_requested: bool = True


class TicketRequest(BaseModel):
    """What a stream ticket opens: one execution's stream, or every execution's with "*"."""

    model_config = _CAMEL

    execution_id: Annotated[
        str, Field(min_length=1, max_length=200, description='an execution id, or "*"')
    ]


class TicketResponse(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    ticket: str
    expires_in_s: int


class WorkerHost(BaseModel):
    """A host of `GET /api/workers` (CONTRACT §7), as events.hosts lists it."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    hostname: str = Field(description="the worker's Celery hostname (`--hostname`)")
    queues: list[str]
    labels: dict[str, str]
    online: bool = Field(description="seen within the last 10 s and not shut down")
    last_seen: str = Field(json_schema_extra={"format": "date-time"})
    running: int = Field(description="executions it runs now")
    concurrency: int = Field(description="pool processes; 0: no bound (embedded mode)")
    version: str


class ProblemBody(BaseModel):
    """One problem of a request refused for several (a bad playbook): where and what."""

    loc: list[str | int]
    msg: str


class ErrorBody(BaseModel):
    # Inlined: the error responses' schema is written into each route, where a `$defs`
    # reference would point nowhere.
    detail: Annotated[
        str | list[ProblemBody],
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": "string"},
                    {"type": "array", "items": ProblemBody.model_json_schema()},
                ]
            }
        ),
    ]


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    detail: str | None = None
    # What does not answer: "Redis", "broker (RabbitMQ)", ...
    unavailable: list[str] | None = None


class PlaybookSummary(BaseModel):
    """A saved playbook of `GET /api/playbooks`: its latest version."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    name: str
    version: int
    updated_at: str = Field(json_schema_extra={"format": "date-time"})


class PlaybookVersion(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    version: int
    created_at: str = Field(json_schema_extra={"format": "date-time"})
    created_by: str | None = Field(None, description="the saving token's name")


class ParamField(BaseModel):
    """A declared param of a saved playbook (CONTRACT §10), for a form to ask it."""

    name: str
    type: ParamType
    required: bool
    default: str | int | bool | None = None
    pattern: str | None = None
    min: int | None = None
    max: int | None = None
    choices: list[str] | None = None
    description: str | None = None


class SavedPlaybookBody(PlaybookVersion):
    """One version of a saved playbook (the latest, or `?version=`), and every version; with
    `params`, its declared params."""

    name: str
    yaml: str
    versions: list[PlaybookVersion]
    params: list[ParamField] | None = None


class ScheduleBody(BaseModel):
    """A schedule (CONTRACT §10) as the relay answers it; `cron` or `intervalS`."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    id: str
    playbook_name: str
    params: dict[str, str]
    cron: str | None = None
    timezone: str
    interval_s: int | None = Field(None, alias="intervalS")
    enabled: bool
    created_at: str = Field(json_schema_extra={"format": "date-time"})
    updated_at: str = Field(json_schema_extra={"format": "date-time"})
    created_by: str | None = None
    next_run_at: str | None = Field(None, json_schema_extra={"format": "date-time"})


class WhoAmI(BaseModel):
    """`GET /api/whoami`: the calling token (CONTRACT §9)."""

    name: str
    role: Role
    queues: list[str] | None = Field(default=None, description="its queue scope; none: all")


class TokenRequest(BaseModel):
    """`POST /api/tokens`."""

    model_config = _CAMEL

    name: str = Field(description="letters, digits, '.', '_', '-'; at most 128")
    role: Role
    queues: list[str] | None = Field(
        default=None, description="only executions whose every step runs on these queues"
    )
    expires_in_s: int | None = Field(
        default=None, gt=0, le=MAX_EXPIRES_IN_S, description="seconds; none: forever"
    )


class TokenInfo(BaseModel):
    """A token as `GET /api/tokens` lists it: never its secret."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    name: str
    role: Role
    queues: list[str] | None
    created_at: str
    created_by: str | None
    expires_at: str | None
    revoked_at: str | None


class TokenCreated(TokenInfo):
    """`POST /api/tokens`' answer: the one time the secret is shown."""

    secret: str = Field(description="the bearer token; shown once, stored only hashed")
