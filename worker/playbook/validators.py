"""Field validators of the playbook models: each refuses a value with one readable sentence."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import NoReturn, TypeGuard

from pydantic_core import PydanticCustomError

from events.models import MAX_TIMEOUT_S
from events.params import ParamDecl, ParamError, declaration
from events.wording import describe, shown
from worker.playbook.command import plan_command
from worker.playbook.templates import PARAM_NAME_RE, TemplateError, param_names, parse_template

MAX_RETRIES = 10
# YAML from an HTTP request is parsed before anything else; bound the work it can ask for.
MAX_PLAYBOOK_CHARS = 1_000_000

STEP_ID_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
QUEUE_RE = re.compile(r"^[A-Za-z0-9_.@:-]+$")
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]*$")
NO_BLANKS_RE = re.compile(r"^[^\s\x00-\x1f\x7f]+$")


# --- field validators: each raises one readable sentence ----------------------------------------


def fail(message: str) -> NoReturn:
    raise PydanticCustomError("playbook", message)


def is_integer(value: object) -> TypeGuard[int]:
    """An integer and not a boolean (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def matching(pattern: re.Pattern[str], text: str, message: str) -> str:
    """`text` if `pattern` matches it, else fail with `message`."""
    if not pattern.match(text):
        fail(message)
    return text


def no_nul(text: str) -> str:
    if "\x00" in text:
        fail("must not contain a NUL character")
    return text


def whole_number(value: object, what: str, low: int, high: int | None = None) -> int:
    """`value` if it is an integer from `low` to `high` (no bound with None), else fail
    saying it must be `what` in those bounds."""
    if is_integer(value) and low <= value and (high is None or value <= high):
        return value
    bounds = f"of at least {low}" if high is None else f"from {low} to {high}"
    fail(f"must be {what} {bounds}, got {describe(value)}")


def template_checked(check: Callable[[str], object], text: str) -> str:
    """`text` if `check` finds its templates sound, else fail with the TemplateError's words."""
    try:
        check(text)
    except TemplateError as e:
        fail(str(e))
    return text


def string(value: object) -> str:
    if not isinstance(value, str):
        hint = ""
        if isinstance(value, Mapping):
            # `command: {{ params.x }}` unquoted is a YAML mapping, not a template.
            hint = " (a value that starts with '{' must be quoted in YAML)"
        elif isinstance(value, bool | int | float):
            hint = " (quote it if you mean the text)"
        fail(f"must be a string, got {describe(value)}{hint}")
    return value


def nonempty_string(value: object) -> str:
    text = string(value)
    if not text.strip():
        fail("must not be empty")
    return no_nul(text)


def templated(check: Callable[[str], None] | None = None) -> Callable[[object], str]:
    """A string that may use {{ params.x }}; `check` applies when it uses none."""

    def validate(value: object) -> str:
        text = nonempty_string(value)
        try:
            template = parse_template(text)
        except TemplateError as e:
            fail(str(e))
        if check is not None and not param_names(template):
            check(text)
        return text

    return validate


def check_no_blanks(text: str) -> None:
    matching(
        NO_BLANKS_RE,
        text,
        f"must be one word without spaces or control characters, got {shown(text)}",
    )


def check_queue(text: str) -> None:
    matching(
        QUEUE_RE, text, f"must be a queue name of letters, digits and _ . @ : -, got {shown(text)}"
    )


def check_host(text: str) -> None:
    matching(
        QUEUE_RE, text, f"must be a worker hostname of letters, digits and _ . @ : -, got {text!r}"
    )


def label_key(value: object) -> str:
    text = nonempty_string(value)
    return matching(LABEL_KEY_RE, text, f"{text!r} is not a label key (letters, digits, . _ / -)")


def nonempty_list(value: object) -> object:
    if isinstance(value, list) and not value:
        fail("must list at least one host")
    return value


def nonempty_mapping(value: object) -> object:
    if isinstance(value, Mapping) and not value:
        fail("must name at least one label")
    return value


def command(value: object) -> str:
    return template_checked(plan_command, nonempty_string(value).strip())


def step_id(value: object) -> str:
    # `id: 1` is a YAML integer; ids are text.
    text = str(value) if is_integer(value) else string(value)
    return matching(STEP_ID_RE, text, f"must be letters, digits and _ . - only, got {shown(text)}")


def seconds(value: object) -> int:
    return whole_number(value, "a whole number of seconds", 1, MAX_TIMEOUT_S)


def retries(value: object) -> int:
    return whole_number(value, "a whole number", 0, MAX_RETRIES)


def positive_count(value: object) -> int:
    return whole_number(value, "a whole number", 1)


def failure_count(value: object) -> int:
    return whole_number(value, "a whole number", 0)


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        fail(f"must be true or false, got {describe(value)}")
    return value


def valid_name(value: object, pattern: re.Pattern[str], what: str) -> str:
    """A name `pattern` matches; else `<the value> is not a valid <what>`."""
    text = string(value)
    return matching(pattern, text, f"{shown(text)} is not a valid {what}")


def env_name(value: object) -> str:
    return valid_name(value, ENV_NAME_RE, "environment variable name (letters, digits, _)")


def env_value(value: object) -> str:
    # Numbers are written unquoted often enough (`DEBUG: 1`); booleans and floats are not
    # turned into text because YAML would not give back what was typed (`yes`, `1.10`).
    if is_integer(value):
        return str(value)
    return template_checked(parse_template, no_nul(string(value)))


def param_name(value: object) -> str:
    what = "param name (letters, digits, _, not starting with a digit)"
    return valid_name(value, PARAM_NAME_RE, what)


def param_declaration(value: object) -> ParamDecl:
    """A param's declaration (events.params: a bare default, or a typed mapping)."""
    if isinstance(value, ParamDecl):
        return value
    try:
        return declaration(value)
    except ParamError as e:
        fail(str(e))


def default_step_ids(value: object) -> object:
    """Fill in `id: step_<n>` and `name: <id>` where a step leaves them out."""
    if not isinstance(value, list):
        return value
    steps: list[object] = []
    for n, step in enumerate(value, start=1):
        if isinstance(step, Mapping):
            step = dict(step)
            step.setdefault("id", f"step_{n}")
            step_id = step["id"]
            usable = isinstance(step_id, str) or is_integer(step_id)
            if "name" not in step and usable:
                step["name"] = str(step_id)
        steps.append(step)
    return steps
