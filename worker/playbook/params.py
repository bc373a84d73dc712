"""A run's params: parsed from `--param K=V`, checked against the playbook, resolved."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from events.errors import InvalidRequestError
from events.params import ParamDecl, ParamError, as_text, declaration
from events.requests import split_pair
from events.wording import shown
from worker.playbook.locate import Locator, Problems
from worker.playbook.spec import Path, Playbook, param_uses
from worker.playbook.templates import PARAM_NAME_RE


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
    """The values of the playbook's params: the run's `params` checked against their
    declarations (events.params), else the defaults.

    Raises PlaybookError (field `params`) listing each required or used param without a value,
    each name in `params` the playbook neither declares nor uses, and each value its
    declaration refuses (wrong type, out of range, not a choice, not matching the pattern).
    """
    problems = Problems(render_locator(playbook))
    values = check_given(problems, playbook.params, playbook.param_uses(), params)
    problems.raise_if_any()
    return values


def secret_names(playbook: Playbook) -> list[str]:
    """The params whose values are secrets: masked in every event, never stored."""
    return [name for name, decl in playbook.params.items() if decl.secret]


def render_locator(playbook: Playbook) -> Locator:
    """Errors after loading name the step by its id too, but have no YAML lines."""
    return Locator(playbook.source, None, {"steps": [{"id": s.id} for s in playbook.steps]})


def check_params(
    problems: Problems,
    data: Mapping[str, Any],
    params: Mapping[str, object] | None,
    *,
    values: bool = True,
) -> None:
    """The run's params against a playbook still in its raw form (the loader's check, which
    runs whether or not the model took the playbook: a bad step does not hide a bad param; a
    bad declaration is the model's problem, and its value is not checked)."""
    declared = data.get("params")
    decls: dict[str, ParamDecl | None] = {}
    for name, raw in declared.items() if isinstance(declared, Mapping) else ():
        if isinstance(name, str):
            try:
                decls[name] = declaration(raw)
            except ParamError:
                decls[name] = None
    uses = param_uses(data)
    check_secret_uses(problems, decls, uses)
    if values:  # not when saving: only a run gives values
        check_given(problems, decls, uses, params)


# Where a secret may go: a step's command and env, which only the step's process sees. Options,
# queues and targets show in events and decide routing: a secret there would be on display.
_SECRET_PLACES = ("command", "env")


def check_secret_uses(
    problems: Problems, decls: Mapping[str, ParamDecl | None], uses: Mapping[str, list[Path]]
) -> None:
    for name, paths in uses.items():
        decl = decls.get(name)
        if decl is None or not decl.secret:
            continue
        for path in paths:
            if not (len(path) >= 3 and path[0] == "steps" and path[2] in _SECRET_PLACES):
                problems.add(
                    path,
                    f"secret param {shown(name)} can only be used in a step's command or env",
                )


def check_given(
    problems: Problems,
    declared: Mapping[str, ParamDecl | None],
    uses: Mapping[str, list[Path]],
    params: Mapping[str, object] | None,
) -> dict[str, str]:
    """The run's values (given, else defaults); each problem of `params` (and each required or
    used param that has neither a default nor a value) added to `problems`. A None declaration
    (refused by the model) takes any value."""
    values: dict[str, str] = {}
    known = sorted({*declared, *uses})
    given = params or {}
    for name, value in given.items():
        if not isinstance(name, str) or not PARAM_NAME_RE.match(name):
            problems.add_param(name, f"{shown(str(name))} is not a valid param name")
        elif name not in known:
            listing = ", ".join(known) if known else "none"
            problems.add_param(
                name, f"unknown param {shown(name)}; this playbook's params are: {listing}"
            )
        else:
            try:
                values[name] = (declared.get(name) or ParamDecl()).text(value)
            except ParamError as e:
                problems.add_param(name, f"param {shown(name)} {e}")
    for name, decl in declared.items():
        if name in given or decl is None:
            continue
        if decl.default is not None:
            values[name] = as_text(decl.default)
        elif decl.required or name in uses:  # used: it needs a value all the same
            problems.add_param(
                name,
                f"param {shown(name)} is required: pass it (--param {name}=VALUE, or"
                f' "params": {{"{name}": ...}} in the request)',
            )
    for name, paths in uses.items():
        if name not in declared and name not in given:
            problems.add(
                paths[0],
                f"{{{{ params.{name} }}}} has no value: pass it (--param {name}=VALUE, or"
                f' "params": {{"{name}": ...}} in the request) or give it a default under params',
                field="params",
                loc=("params", name),
            )
    return values
