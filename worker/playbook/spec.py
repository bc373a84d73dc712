"""Playbooks (CONTRACT §5) as frozen models: every key known, every value checked on load.

Build one with `worker.playbook.loading.load_playbook`, which also locates problems in the YAML
and checks the run's params.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    model_validator,
)
from pydantic_core import PydanticCustomError

from events.params import ParamDecl
from events.wording import shown
from worker.playbook import validators as v
from worker.playbook.command import CommandPlan, plan_command
from worker.playbook.notify import Notify
from worker.playbook.templates import TemplateError, param_names, parse_template

Path = tuple[str | int, ...]


# `name` is optional: the loader gives a playbook read from a file that file's name instead.
DEFAULT_NAME = "playbook"
# The fields that may use {{ params.x }}, besides a step's `command` and `env` values.
TEMPLATED_OPTIONS = ("working_dir", "aws_profile", "aws_region")
TEMPLATED_STEP_KEYS = (*TEMPLATED_OPTIONS, "queue")


def _check_steps(steps: list[Step]) -> list[Step]:
    # Duplicate ids are checked on the raw steps (duplicate_step_ids), so that a bad field in
    # another step does not hide them.
    if not steps:
        v.fail("must list at least one step")
    return steps


def duplicate_step_ids(steps: object) -> list[tuple[int, str]]:
    """(index, problem) for each step whose id an earlier step has, from the raw steps (ids
    defaulted as the model does; an id the model refuses is not compared)."""
    defaulted = v.default_step_ids(steps)
    if not isinstance(defaulted, list):
        return []
    first_index: dict[str, int] = {}
    out: list[tuple[int, str]] = []
    for index, step in enumerate(defaulted):
        if not isinstance(step, Mapping):
            continue
        try:
            step_id = v.step_id(step["id"])
        except PydanticCustomError:
            continue
        if step_id in first_index:
            out.append(
                (
                    index,
                    f"duplicate step id {shown(step_id)}, also step {first_index[step_id] + 1}",
                )
            )
        else:
            first_index[step_id] = index
    return out


def templated_fields(data: Mapping[str, Any]) -> Iterator[tuple[Path, str]]:
    """Each field that may use params, with its path, in a playbook as plain data (raw, or a
    model's dump); values that are not text are passed over (the model refuses them)."""

    def text(path: Path, value: object) -> Iterator[tuple[Path, str]]:
        if isinstance(value, str):
            yield path, value

    options = data.get("options")
    if isinstance(options, Mapping):
        for key in TEMPLATED_OPTIONS:
            yield from text(("options", key), options.get(key))
    steps = data.get("steps")
    for index, step in enumerate(steps if isinstance(steps, list) else []):
        if not isinstance(step, Mapping):
            continue
        yield from text(("steps", index, "command"), step.get("command"))
        env = step.get("env")
        for name, value in env.items() if isinstance(env, Mapping) else ():
            yield from text(("steps", index, "env", name), value)
        for key in TEMPLATED_STEP_KEYS:
            yield from text(("steps", index, key), step.get(key))
        targets = step.get("targets")
        if isinstance(targets, Mapping):
            yield from text(("steps", index, "targets", "queue"), targets.get("queue"))
            hosts = targets.get("hosts")
            for i, host in enumerate(hosts if isinstance(hosts, list) else []):
                yield from text(("steps", index, "targets", "hosts", i), host)
            labels = targets.get("labels")
            for key, value in labels.items() if isinstance(labels, Mapping) else ():
                yield from text(("steps", index, "targets", "labels", key), value)


def param_uses(data: Mapping[str, Any]) -> dict[str, list[Path]]:
    """Each param used anywhere, with the paths (as in `steps[1].command`) that use it; a
    malformed template uses none (the model refuses it)."""
    uses: dict[str, list[Path]] = {}
    for path, text in templated_fields(data):
        try:
            names = param_names(parse_template(text))
        except TemplateError:
            continue
        for name in names:
            uses.setdefault(name, []).append(path)
    return uses


Text = Annotated[str, BeforeValidator(v.nonempty_string)]
AnyText = Annotated[str, BeforeValidator(v.string)]
Seconds = Annotated[int, BeforeValidator(v.seconds)]
WorkingDir = Annotated[str, BeforeValidator(v.templated())]
OneWord = Annotated[str, BeforeValidator(v.templated(v.check_no_blanks))]
QueueName = Annotated[str, BeforeValidator(v.templated(v.check_queue))]
EnvName = Annotated[str, BeforeValidator(v.env_name)]
EnvValue = Annotated[str, BeforeValidator(v.env_value)]
ParamName = Annotated[str, BeforeValidator(v.param_name)]
ParamSpec = Annotated[ParamDecl, BeforeValidator(v.param_declaration)]
HostName = Annotated[str, BeforeValidator(v.templated(v.check_host))]
LabelKey = Annotated[str, BeforeValidator(v.label_key)]


class _Spec(BaseModel):
    """Frozen, and an unknown key is an error (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PlaybookOptions(_Spec):
    """Defaults for every step (a step's own value wins)."""

    working_dir: WorkingDir | None = None
    timeout: Seconds | None = None
    aws_profile: OneWord | None = None
    aws_region: OneWord | None = None


class Targets(_Spec):
    """The hosts a fan-out step runs on (CONTRACT §7): exactly one of the three keys."""

    queue: QueueName | None = None
    hosts: Annotated[list[HostName], BeforeValidator(v.nonempty_list)] | None = None
    labels: Annotated[dict[LabelKey, OneWord], BeforeValidator(v.nonempty_mapping)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Targets:
        given = [k for k in TARGET_KEYS if getattr(self, k) is not None]
        if len(given) != 1:
            got = " and ".join(given) if given else "none"
            v.fail(f"must name exactly one of queue, hosts or labels, got {got}")
        return self

    def templated(self) -> Iterator[tuple[tuple[str | int, ...], str]]:
        """Each value that may use {{ params.x }}, with its path under `targets`."""
        if self.queue is not None:
            yield ("queue",), self.queue
        for i, host in enumerate(self.hosts or ()):
            yield ("hosts", i), host
        for key, value in (self.labels or {}).items():
            yield ("labels", key), value


TARGET_KEYS = ("queue", "hosts", "labels")


class Step(_Spec):
    """One step; `id` defaults to step_<n> and `name` to the id (filled in by Playbook)."""

    id: Annotated[str, BeforeValidator(v.step_id)]
    name: Text
    command: Annotated[str, BeforeValidator(v.command)]
    continue_on_error: Annotated[bool, BeforeValidator(v.boolean)] = False
    timeout: Seconds | None = None
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)
    working_dir: WorkingDir | None = None
    aws_profile: OneWord | None = None
    aws_region: OneWord | None = None
    queue: QueueName | None = None
    retries: Annotated[int, BeforeValidator(v.retries)] = 0
    # A fan-out step (CONTRACT §7): once on every matching host, `parallel` at a time (None:
    # all at once), hosts not started skipped once more than `max_failures` failed.
    targets: Targets | None = None
    parallel: Annotated[int, BeforeValidator(v.positive_count)] | None = None
    max_failures: Annotated[int, BeforeValidator(v.failure_count)] | None = None

    def plan(self) -> CommandPlan:
        return plan_command(self.command)


class Playbook(_Spec):
    """A whole playbook. Build it with load_playbook(), which also checks the run's params."""

    name: Text = DEFAULT_NAME
    description: AnyText | None = None
    options: PlaybookOptions = Field(default_factory=PlaybookOptions)
    params: dict[ParamName, ParamSpec] = Field(default_factory=dict)
    max_concurrent: Annotated[int, BeforeValidator(v.positive_count)] | None = None
    steps: Annotated[list[Step], BeforeValidator(v.default_step_ids), AfterValidator(_check_steps)]
    notify: list[Notify] = Field(default_factory=list)

    _source: str = PrivateAttr(default="")

    @property
    def source(self) -> str:
        """Where it was loaded from (a file name, `<request>`), or its name in quotes."""
        return self._source or f'playbook "{self.name}"'

    @property
    def total_steps(self) -> int:
        return len(self.steps)

    def param_uses(self) -> dict[str, list[Path]]:
        """Each param used anywhere, with the paths (as in `steps[1].command`) that use it."""
        return param_uses(self.model_dump())
