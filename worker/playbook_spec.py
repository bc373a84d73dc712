"""Playbooks (CONTRACT §5): the YAML models, loading with located errors, and rendering a step.

`load_playbook` is the one way in: it parses YAML text (or takes an already parsed object), checks
everything that can be checked before anything runs, including the run's params, and raises
`PlaybookError` naming the source, the line, the step and the field. `render_step` turns one step
and the run's params into what a worker executes (see `worker.templating` for how values are kept
from becoming code).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NoReturn

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from events.errors import InvalidRequestError
from events.models import ExecutionOptions
from worker.templating import (
    PARAM_NAME_RE,
    CommandPlan,
    Template,
    TemplateError,
    param_names,
    parse_template,
    plan_command,
    render_plain,
)

MAX_TIMEOUT_S = 7 * 24 * 3600
MAX_RETRIES = 10
# YAML from an HTTP request is parsed before anything else; bound the work it can ask for.
MAX_PLAYBOOK_CHARS = 1_000_000

STEP_ID_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
QUEUE_RE = re.compile(r"^[A-Za-z0-9_.@:-]+$")
_NO_BLANKS_RE = re.compile(r"^[^\s\x00-\x1f\x7f]+$")

CommandType = Literal["aws_cli", "script"]


class PlaybookError(InvalidRequestError):
    """A playbook or its params are refused; the message names source, line, step and field.

    `field` is the request field at fault (`playbook`, or `params` for the run's params);
    `message` is the located text; the other attributes carry the same facts as data.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str = "playbook",
        source: str = "<request>",
        line: int | None = None,
        step_number: int | None = None,
        step_id: str | None = None,
        key: str | None = None,
        problem: str = "",
        more: int = 0,
    ) -> None:
        super().__init__(field, message)
        self.source = source
        self.line = line
        self.step_number = step_number
        self.step_id = step_id
        self.key = key
        self.problem = problem or message
        self.more = more


# --- field validators: each raises one readable sentence ----------------------------------------


def _fail(message: str) -> NoReturn:
    raise PydanticCustomError("playbook", message)


def _describe(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:40] + "..."
        return f"the string {text!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def _string(value: object) -> str:
    if not isinstance(value, str):
        hint = ""
        if isinstance(value, Mapping):
            # `command: {{ params.x }}` unquoted is a YAML mapping, not a template.
            hint = " (a value that starts with '{' must be quoted in YAML)"
        elif isinstance(value, bool | int | float):
            hint = " (quote it if you mean the text)"
        _fail(f"must be a string, got {_describe(value)}{hint}")
    return value


def _nonempty_string(value: object) -> str:
    text = _string(value)
    if not text.strip():
        _fail("must not be empty")
    if "\x00" in text:
        _fail("must not contain a NUL character")
    return text


def _templated(check: Callable[[str], None] | None = None) -> Callable[[object], str]:
    """A string that may use {{ params.x }}; `check` applies when it uses none."""

    def validate(value: object) -> str:
        text = _nonempty_string(value)
        try:
            template = parse_template(text)
        except TemplateError as e:
            _fail(str(e))
        if check is not None and not param_names(template):
            check(text)
        return text

    return validate


def _check_no_blanks(text: str) -> None:
    if not _NO_BLANKS_RE.match(text):
        _fail(f"must be one word without spaces or control characters, got {text!r}")


def _check_queue(text: str) -> None:
    if not QUEUE_RE.match(text):
        _fail(f"must be a queue name of letters, digits and _ . @ : -, got {text!r}")


def _command(value: object) -> str:
    text = _nonempty_string(value).strip()
    try:
        plan_command(text)
    except TemplateError as e:
        _fail(str(e))
    return text


def _step_id(value: object) -> str:
    # `id: 1` is a YAML integer; ids are text.
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else _string(value)
    if not STEP_ID_RE.match(text):
        _fail(f"must be letters, digits and _ . - only, got {text!r}")
    return text


def _seconds(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TIMEOUT_S:
        _fail(
            f"must be a whole number of seconds from 1 to {MAX_TIMEOUT_S}, got {_describe(value)}"
        )
    return value


def _retries(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETRIES:
        _fail(f"must be a whole number from 0 to {MAX_RETRIES}, got {_describe(value)}")
    return value


def _positive_count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        _fail(f"must be a whole number of at least 1, got {_describe(value)}")
    return value


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        _fail(f"must be true or false, got {_describe(value)}")
    return value


def _env_name(value: object) -> str:
    text = _string(value)
    if not ENV_NAME_RE.match(text):
        _fail(f"{text!r} is not a valid environment variable name (letters, digits, _)")
    return text


def _env_value(value: object) -> str:
    # Numbers are written unquoted often enough (`DEBUG: 1`); booleans and floats are not
    # turned into text because YAML would not give back what was typed (`yes`, `1.10`).
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    text = _string(value)
    if "\x00" in text:
        _fail("must not contain a NUL character")
    try:
        parse_template(text)
    except TemplateError as e:
        _fail(str(e))
    return text


def _param_name(value: object) -> str:
    text = _string(value)
    if not PARAM_NAME_RE.match(text):
        _fail(f"{text!r} is not a valid param name (letters, digits, _, not starting with a digit)")
    return text


def param_value(value: object) -> str:
    """A param value as the text it stands for: strings as is, numbers and booleans as YAML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if not isinstance(value, str):
        _fail(f"must be a string, number or boolean, got {_describe(value)}")
    if "\x00" in value:
        _fail("must not contain a NUL character")
    return value


def _default_step_ids(value: object) -> object:
    """Fill in `id: step_<n>` and `name: <id>` where a step leaves them out."""
    if not isinstance(value, list):
        return value
    steps: list[object] = []
    for n, step in enumerate(value, start=1):
        if isinstance(step, Mapping):
            step = dict(step)
            step.setdefault("id", f"step_{n}")
            step_id = step["id"]
            usable = isinstance(step_id, str | int) and not isinstance(step_id, bool)
            if "name" not in step and usable:
                step["name"] = str(step_id)
        steps.append(step)
    return steps


class _StepProblem(ValueError):
    """A whole-list check that blames one field of one step."""

    def __init__(self, index: int, key: str, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.key = key


def _check_steps(steps: list[Step]) -> list[Step]:
    if not steps:
        _fail("must list at least one step")
    first_index: dict[str, int] = {}
    for index, step in enumerate(steps):
        if step.id in first_index:
            raise _StepProblem(
                index, "id", f"duplicate step id {step.id!r}, also step {first_index[step.id] + 1}"
            )
        first_index[step.id] = index
    return steps


Text = Annotated[str, BeforeValidator(_nonempty_string)]
AnyText = Annotated[str, BeforeValidator(_string)]
Seconds = Annotated[int, BeforeValidator(_seconds)]
WorkingDir = Annotated[str, BeforeValidator(_templated())]
OneWord = Annotated[str, BeforeValidator(_templated(_check_no_blanks))]
QueueName = Annotated[str, BeforeValidator(_templated(_check_queue))]
EnvName = Annotated[str, BeforeValidator(_env_name)]
EnvValue = Annotated[str, BeforeValidator(_env_value)]
ParamName = Annotated[str, BeforeValidator(_param_name)]
ParamValue = Annotated[str, BeforeValidator(param_value)]


class _Spec(BaseModel):
    """Frozen, and an unknown key is an error (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PlaybookOptions(_Spec):
    """Defaults for every step (a step's own value wins)."""

    working_dir: WorkingDir | None = None
    timeout: Seconds | None = None
    aws_profile: OneWord | None = None
    aws_region: OneWord | None = None


class Step(_Spec):
    """One step; `id` defaults to step_<n> and `name` to the id (filled in by Playbook)."""

    id: Annotated[str, BeforeValidator(_step_id)]
    name: Text
    command: Annotated[str, BeforeValidator(_command)]
    continue_on_error: Annotated[bool, BeforeValidator(_boolean)] = False
    timeout: Seconds | None = None
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)
    working_dir: WorkingDir | None = None
    aws_profile: OneWord | None = None
    aws_region: OneWord | None = None
    queue: QueueName | None = None
    retries: Annotated[int, BeforeValidator(_retries)] = 0

    def plan(self) -> CommandPlan:
        return plan_command(self.command)


class Playbook(_Spec):
    """A whole playbook. Build it with load_playbook(), which also checks the run's params."""

    name: Text
    description: AnyText | None = None
    options: PlaybookOptions = Field(default_factory=PlaybookOptions)
    params: dict[ParamName, ParamValue] = Field(default_factory=dict)
    max_concurrent: Annotated[int, BeforeValidator(_positive_count)] | None = None
    steps: Annotated[list[Step], BeforeValidator(_default_step_ids), AfterValidator(_check_steps)]

    _source: str = PrivateAttr(default="")

    @property
    def source(self) -> str:
        """Where it was loaded from (a file name, `<request>`), or its name in quotes."""
        return self._source or f'playbook "{self.name}"'

    @property
    def total_steps(self) -> int:
        return len(self.steps)

    def param_uses(self) -> dict[str, list[tuple[str | int, ...]]]:
        """Each param used anywhere, with the paths (as in `steps[1].command`) that use it."""
        uses: dict[str, list[tuple[str | int, ...]]] = {}
        for path, text in self._templated_fields():
            for name in param_names(parse_template(text)):
                uses.setdefault(name, []).append(path)
        return uses

    def _templated_fields(self) -> Iterator[tuple[tuple[str | int, ...], str]]:
        for key in ("working_dir", "aws_profile", "aws_region"):
            value = getattr(self.options, key)
            if value is not None:
                yield ("options", key), value
        for index, step in enumerate(self.steps):
            yield ("steps", index, "command"), step.command
            for name, value in step.env.items():
                yield ("steps", index, "env", name), value
            for key in ("working_dir", "aws_profile", "aws_region", "queue"):
                value = getattr(step, key)
                if value is not None:
                    yield ("steps", index, key), value


# --- locating problems in the YAML ---------------------------------------------------------------

_Path = tuple[str | int, ...]


def _path_text(path: _Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


class _Locator:
    """Maps a path in the playbook to its YAML line, and builds located PlaybookErrors."""

    def __init__(self, source: str, root: yaml.Node | None, data: object) -> None:
        self.source = source
        self.root = root
        self.data = data

    def line(self, path: _Path, *, at_key: bool = False) -> int | None:
        node = self.root
        if node is None:
            return None
        found: yaml.Node = node
        for n, part in enumerate(path):
            last = n == len(path) - 1
            child: yaml.Node | None = None
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                for key_node, value_node in node.value:
                    if isinstance(key_node, yaml.ScalarNode) and key_node.value == part:
                        child = key_node if last and at_key else value_node
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(part, int)
                and 0 <= part < len(node.value)
            ):
                child = node.value[part]
            if child is None:
                break
            node = found = child
        return int(found.start_mark.line) + 1

    def step_label(self, index: int) -> tuple[str, str | None]:
        """('step 2 (list)', 'list') for the step at index, from the raw data."""
        step_id: str | None = f"step_{index + 1}"
        steps = self.data.get("steps") if isinstance(self.data, Mapping) else None
        if isinstance(steps, list) and index < len(steps):
            raw = steps[index]
            if isinstance(raw, Mapping) and "id" in raw:
                raw_id = raw["id"]
                step_id = raw_id if isinstance(raw_id, str) and raw_id else None
        label = f"step {index + 1}" + (f" ({step_id})" if step_id else "")
        return label, step_id

    def error(
        self,
        path: _Path,
        problem: str,
        *,
        at_key: bool = False,
        field: str = "playbook",
        more: int = 0,
        line: int | None = None,
    ) -> PlaybookError:
        line = line if line is not None else self.line(path, at_key=at_key)
        where = [self.source]
        if line is not None:
            where.append(f"line {line}")
        step_number = step_id = None
        key_path = path
        if len(path) >= 2 and path[0] == "steps" and isinstance(path[1], int):
            label, step_id = self.step_label(path[1])
            step_number = path[1] + 1
            where.append(label)
            key_path = path[2:]
        key = _path_text(key_path) or None
        if key:
            where.append(f"field {key}")
        message = ", ".join(where) + f": {problem}"
        if more:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        return PlaybookError(
            message,
            field=field,
            source=self.source,
            line=line,
            step_number=step_number,
            step_id=step_id,
            key=key,
            problem=problem,
            more=more,
        )


def _model_for(path: _Path) -> type[BaseModel] | None:
    if len(path) == 1:
        return Playbook
    if len(path) == 2 and path[0] == "options":
        return PlaybookOptions
    if len(path) == 3 and path[0] == "steps" and isinstance(path[1], int):
        return Step
    return None


def _unknown_key(path: _Path) -> str:
    key = str(path[-1])
    model = _model_for(path)
    if model is None:
        return f"unknown key {key!r}"
    allowed = sorted(model.model_fields)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r} (allowed: {', '.join(allowed)}){hint}"


def _pydantic_problem(err: Mapping[str, Any]) -> tuple[_Path, str, bool]:
    """(path, problem, at_key) for one pydantic error."""
    path: _Path = tuple(err["loc"])
    kind = err["type"]
    at_key = False
    if path and path[-1] == "[key]":
        path, at_key = path[:-1], True
    if kind == "value_error":
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, _StepProblem):
            return (*path, cause.index, cause.key), str(cause), False
        return path, str(err["msg"]).removeprefix("Value error, "), at_key
    if kind == "extra_forbidden":
        return path, _unknown_key(path), True
    if kind == "missing":
        what = "every step" if len(path) == 3 and path[0] == "steps" else "a playbook"
        return path, f"is missing ({what} needs `{path[-1]}`)", False
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return path, f"must be a mapping of keys to values, got {_describe(err['input'])}", False
    if kind == "list_type":
        return path, f"must be a list, got {_describe(err['input'])}", False
    return path, str(err["msg"]), at_key


# --- loading -------------------------------------------------------------------------------------


def _parse_yaml(text: str, locator: _Locator) -> tuple[yaml.Node | None, object]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = int(mark.line) + 1 if mark is not None else None
        problem = " ".join(p for p in (e.context, e.problem) if p) or "invalid YAML"
        lines = text.splitlines()
        if line is not None and line <= len(lines) and "{{" in lines[line - 1]:
            problem += " (a value that starts with '{{' must be quoted in YAML)"
        raise locator.error((), f"YAML syntax error: {problem}", line=line) from e
    except yaml.YAMLError as e:
        raise locator.error((), f"YAML syntax error: {e}") from e
    finally:
        loader.dispose()
    return node, data


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _check_duplicate_keys(root: yaml.Node, locator: _Locator) -> None:
    """YAML keeps the last of two equal keys silently; a playbook with one is refused."""
    seen_nodes: set[int] = set()
    todo: list[tuple[yaml.Node, _Path]] = [(root, ())]
    while todo:
        node, path = todo.pop()
        if id(node) in seen_nodes:
            continue  # an alias: already checked (and not walked twice)
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: dict[str, int] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                    continue
                key, line = str(key_node.value), int(key_node.start_mark.line) + 1
                if key in keys:
                    raise locator.error(
                        (*path, key),
                        f"key {key!r} appears twice in one mapping (lines {keys[key]} and {line})",
                        line=line,
                    )
                keys[key] = line
                todo.append((value_node, (*path, key)))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend((child, (*path, i)) for i, child in enumerate(node.value))


def load_playbook(
    source: str | Mapping[str, Any],
    *,
    source_name: str = "<request>",
    params: Mapping[str, object] | None = None,
) -> Playbook:
    """Parse and check a playbook (YAML text or a parsed object), and the run's `params`.

    Raises PlaybookError, naming source_name, the line (for YAML text), the step and the field,
    for anything that would stop it: bad YAML, unknown keys, a missing or empty command, duplicate
    step ids, an empty step list, bad timeouts or retries, malformed templates, a param that is
    used but has neither a default nor a value in `params`, or a value in `params` for a param
    the playbook does not know.
    """
    locator = _Locator(source_name, None, source)
    if isinstance(source, str):
        if len(source) > MAX_PLAYBOOK_CHARS:
            raise locator.error((), f"is larger than {MAX_PLAYBOOK_CHARS} characters")
        node, data = _parse_yaml(source, locator)
        locator = _Locator(source_name, node, data)
        if node is not None:
            _check_duplicate_keys(node, locator)
    else:
        data = source
    if data is None:
        raise locator.error((), "is empty: a playbook needs at least `name` and `steps`")
    if not isinstance(data, Mapping):
        raise locator.error(
            (), f"must be a mapping with `name` and `steps` at the top, got {_describe(data)}"
        )
    try:
        playbook = Playbook.model_validate(dict(data))
    except ValidationError as e:
        errors = e.errors()
        problems = [_pydantic_problem(err) for err in errors]

        def order(k: int) -> tuple[int, bool, int]:
            # Document order by the mapping at fault; a missing key after the other problems of
            # its mapping, since an unknown key beside it is often the same typo.
            path, _, at_key = problems[k]
            missing = errors[k]["type"] == "missing"
            own = locator.line(path, at_key=at_key) or 0
            return (locator.line(path[:-1]) or 0) if path else own, missing, own

        path, problem, at_key = problems[min(range(len(problems)), key=order)]
        raise locator.error(path, problem, at_key=at_key, more=len(problems) - 1) from None
    playbook._source = source_name
    _resolve(playbook, params, locator)
    return playbook


# --- params --------------------------------------------------------------------------------------


def parse_param_args(args: Sequence[str]) -> dict[str, str]:
    """`["K=V", ...]` (the CLI's `--param`) as a dict; a later K wins."""
    out: dict[str, str] = {}
    for arg in args:
        name, sep, value = arg.partition("=")
        if not sep:
            raise InvalidRequestError("param", f"expected NAME=VALUE, got {arg!r}")
        if not PARAM_NAME_RE.match(name):
            raise InvalidRequestError(
                "param",
                f"{name!r} in {arg!r} is not a valid param name"
                " (letters, digits, _, not starting with a digit)",
            )
        if "\x00" in value:
            raise InvalidRequestError("param", f"the value of {name} contains a NUL character")
        out[name] = value
    return out


def resolve_params(
    playbook: Playbook, params: Mapping[str, object] | None = None
) -> dict[str, str]:
    """The values of the playbook's params: its defaults, overridden by the run's `params`.

    Raises PlaybookError (field `params`) if a used param has no value, if `params` names a param
    the playbook neither declares nor uses, or if a value is not a scalar.
    """
    return _resolve(playbook, params, _render_locator(playbook))


def _render_locator(playbook: Playbook) -> _Locator:
    """Errors after loading name the step by its id too, but have no YAML lines."""
    return _Locator(playbook.source, None, {"steps": [{"id": s.id} for s in playbook.steps]})


def _resolve(
    playbook: Playbook, params: Mapping[str, object] | None, locator: _Locator
) -> dict[str, str]:
    given: dict[str, str] = {}
    uses = playbook.param_uses()
    known = sorted({*playbook.params, *uses})
    for name, value in (params or {}).items():
        if not isinstance(name, str) or not PARAM_NAME_RE.match(name):
            raise _params_error(locator, f"{name!r} is not a valid param name")
        if name not in known:
            listing = ", ".join(known) if known else "none"
            raise _params_error(
                locator, f"unknown param {name!r}; this playbook's params are: {listing}"
            )
        try:
            given[name] = param_value(value)
        except PydanticCustomError as e:
            raise _params_error(locator, f"param {name!r} {e}") from None
    values = {**playbook.params, **given}
    for name, paths in uses.items():
        if name not in values:
            raise locator.error(
                paths[0],
                f"{{{{ params.{name} }}}} has no value: pass it (--param {name}=VALUE, or"
                f' "params": {{"{name}": ...}} in the request) or give it a default under params',
                field="params",
            )
    return values


def _params_error(locator: _Locator, problem: str) -> PlaybookError:
    return PlaybookError(
        f"{locator.source}, params: {problem}",
        field="params",
        source=locator.source,
        key="params",
        problem=problem,
    )


# --- rendering -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RenderedStep:
    """One step with the run's params put in: what a worker runs and what the events show."""

    step_id: str
    step_name: str
    step_number: int  # 1-based
    total_steps: int
    command_type: CommandType
    display_command: str  # the command with values as is, for events (masked by the worker)
    argv: tuple[str, ...] | None  # aws_cli: run without a shell
    script: str | None  # script: run with bash -c; values are quoted
    options: ExecutionOptions  # effective: the step's value, else the playbook's options
    env: Mapping[str, str]
    queue: str | None
    retries: int
    continue_on_error: bool

    @property
    def timeout_s(self) -> int | None:
        return self.options.timeout

    @property
    def working_dir(self) -> str | None:
        return self.options.working_dir

    @property
    def aws_profile(self) -> str | None:
        return self.options.aws_profile

    @property
    def aws_region(self) -> str | None:
        return self.options.aws_region

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe form (for a Celery task's arguments)."""
        return {
            "step_id": self.step_id,
            "step_name": self.step_name,
            "step_number": self.step_number,
            "total_steps": self.total_steps,
            "command_type": self.command_type,
            "display_command": self.display_command,
            "argv": list(self.argv) if self.argv is not None else None,
            "script": self.script,
            "options": self.options.model_dump(exclude_none=True),
            "env": dict(self.env),
            "queue": self.queue,
            "retries": self.retries,
            "continue_on_error": self.continue_on_error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RenderedStep:
        argv = data["argv"]
        return cls(
            step_id=data["step_id"],
            step_name=data["step_name"],
            step_number=data["step_number"],
            total_steps=data["total_steps"],
            command_type=data["command_type"],
            display_command=data["display_command"],
            argv=tuple(argv) if argv is not None else None,
            script=data["script"],
            options=ExecutionOptions.model_validate(data["options"]),
            env=dict(data["env"]),
            queue=data["queue"],
            retries=data["retries"],
            continue_on_error=data["continue_on_error"],
        )


def _render_word(
    locator: _Locator,
    path: _Path,
    text: str | None,
    values: Mapping[str, str],
    check: re.Pattern[str],
    what: str,
) -> str | None:
    """A templated one-word option (profile, region, queue) rendered and checked again."""
    if text is None:
        return None
    template: Template = parse_template(text)
    out = render_plain(template, values)
    if not check.match(out):
        raise locator.error(path, f"{text!r} gives {out!r}, which is not {what}", field="params")
    return out


def render_options(
    playbook: Playbook, params: Mapping[str, object] | None = None
) -> ExecutionOptions:
    """The playbook's `options` with params put in (for `execution_started`)."""
    values = resolve_params(playbook, params)
    return _options(playbook, None, values, _render_locator(playbook))


def _options(
    playbook: Playbook, index: int | None, values: Mapping[str, str], locator: _Locator
) -> ExecutionOptions:
    step = playbook.steps[index] if index is not None else None
    opts = playbook.options

    def pick(key: str) -> tuple[_Path, str | None]:
        own = getattr(step, key) if step is not None else None
        if own is not None and index is not None:
            return ("steps", index, key), own
        return ("options", key), getattr(opts, key)

    path, working_dir = pick("working_dir")
    wd = render_plain(parse_template(working_dir), values) if working_dir is not None else None
    if wd is not None and not wd.strip():
        raise locator.error(path, f"{working_dir!r} gives an empty directory", field="params")
    timeout = step.timeout if step is not None and step.timeout is not None else opts.timeout
    return ExecutionOptions(
        working_dir=wd,
        timeout=timeout,
        aws_profile=_render_word(locator, *pick("aws_profile"), values, _NO_BLANKS_RE, "one word"),
        aws_region=_render_word(locator, *pick("aws_region"), values, _NO_BLANKS_RE, "one word"),
    )


def render_step(
    playbook: Playbook, index: int, params: Mapping[str, object] | None = None
) -> RenderedStep:
    """Step `index` (0-based) with the run's `params` (over the defaults) put in.

    Raises PlaybookError if params are missing or unknown (see resolve_params), and IndexError
    for an index outside the steps.
    """
    if not 0 <= index < len(playbook.steps):
        raise IndexError(f"step index {index} outside 0..{len(playbook.steps) - 1}")
    values = resolve_params(playbook, params)
    locator = _render_locator(playbook)
    step = playbook.steps[index]
    plan = step.plan()
    display, argv, script = plan.render(values)
    return RenderedStep(
        step_id=step.id,
        step_name=step.name,
        step_number=index + 1,
        total_steps=len(playbook.steps),
        command_type=plan.command_type,
        display_command=display,
        argv=argv,
        script=script,
        options=_options(playbook, index, values, locator),
        env={name: render_plain(parse_template(v), values) for name, v in step.env.items()},
        queue=_render_word(
            locator, ("steps", index, "queue"), step.queue, values, QUEUE_RE, "a queue name"
        ),
        retries=step.retries,
        continue_on_error=step.continue_on_error,
    )


def render_playbook(
    playbook: Playbook, params: Mapping[str, object] | None = None
) -> list[RenderedStep]:
    """Every step rendered (see render_step)."""
    return [render_step(playbook, i, params) for i in range(len(playbook.steps))]
