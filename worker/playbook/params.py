"""A run's params: parsed from `--param K=V`, checked against the playbook, resolved."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from pydantic_core import PydanticCustomError

from events.errors import InvalidRequestError
from events.requests import split_pair
from worker.playbook.locate import Locator, Problems
from worker.playbook.spec import Path, Playbook, param_uses
from worker.playbook.templates import PARAM_NAME_RE
from worker.playbook.validators import param_value, shown


def parse_param_args(args: Sequence[str]) -> dict[str, str]:
    """`["K=V", ...]` (the CLI's `--param`) as a dict; a later K wins."""
    out: dict[str, str] = {}
    for arg in args:
        name, value = split_pair(arg, "param")
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

    Raises PlaybookError (field `params`) listing each used param without a value, each name in
    `params` the playbook neither declares nor uses, and each value that is not a scalar.
    """
    problems = Problems(render_locator(playbook))
    given = check_given(problems, playbook.params, playbook.param_uses(), params)
    problems.raise_if_any()
    return {**playbook.params, **given}


def render_locator(playbook: Playbook) -> Locator:
    """Errors after loading name the step by its id too, but have no YAML lines."""
    return Locator(playbook.source, None, {"steps": [{"id": s.id} for s in playbook.steps]})


def check_params(
    problems: Problems, data: Mapping[str, Any], params: Mapping[str, object] | None
) -> None:
    """The run's params against a playbook still in its raw form (the loader's check, which
    runs whether or not the model took the playbook: a bad step does not hide a bad param)."""
    declared = data.get("params")
    names = [k for k in declared if isinstance(k, str)] if isinstance(declared, Mapping) else []
    check_given(problems, names, param_uses(data), params)


def check_given(
    problems: Problems,
    declared: Collection[str],
    uses: Mapping[str, list[Path]],
    params: Mapping[str, object] | None,
) -> dict[str, str]:
    """The run's good values; each problem of `params` (and each used param that has neither a
    default in `declared` nor a value) added to `problems`."""
    given: dict[str, str] = {}
    known = sorted({*declared, *uses})
    for name, value in (params or {}).items():
        if not isinstance(name, str) or not PARAM_NAME_RE.match(name):
            problems.add_param(name, f"{shown(str(name))} is not a valid param name")
        elif name not in known:
            listing = ", ".join(known) if known else "none"
            problems.add_param(
                name, f"unknown param {shown(name)}; this playbook's params are: {listing}"
            )
        else:
            try:
                given[name] = param_value(value)
            except PydanticCustomError as e:
                problems.add_param(name, f"param {shown(name)} {e}")
    for name, paths in uses.items():
        if name not in declared and name not in (params or {}):
            problems.add(
                paths[0],
                f"{{{{ params.{name} }}}} has no value: pass it (--param {name}=VALUE, or"
                f' "params": {{"{name}": ...}} in the request) or give it a default under params',
                field="params",
                loc=("params", name),
            )
    return given
