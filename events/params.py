"""Typed params of a playbook (CONTRACT §10): a declaration, and a run's value checked by it.

The one rule of what a param may be and take, pure data: the worker side's loader checks
playbooks and runs with it (worker/playbook/params.py), the relay shows the declarations to the
console's form (`GET /api/playbooks/{name}`). A bare value is a string param with that default,
as before types existed:

    params:
      region: {type: choice, choices: [eu-west-1, us-east-1], default: eu-west-1}
      keep:   {type: int, min: 1, max: 30, required: true}
      api_key: {type: secret}
      bucket: logs-archive
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, model_serializer

from events.wording import describe, shown


class ParamType(StrEnum):
    STRING = "string"
    INT = "int"
    BOOL = "bool"
    CHOICE = "choice"
    SECRET = "secret"


# The keys a declaration may have, and those that only some types take.
_COMMON = ("type", "required", "default", "description")
_OWN: dict[ParamType, tuple[str, ...]] = {
    ParamType.STRING: ("pattern",),
    ParamType.INT: ("min", "max"),
    ParamType.BOOL: (),
    ParamType.CHOICE: ("choices",),
    ParamType.SECRET: (),
}
_ALL_KEYS = sorted({*_COMMON, *(k for keys in _OWN.values() for k in keys)})
_TYPES = ", ".join(ParamType)
_INT_RE = re.compile(r"^[+-]?[0-9]{1,18}$")
_BOOLS = {"true": True, "false": False}

Scalar = str | int | bool


class ParamError(ValueError):
    """A declaration or a value is refused; `problems` are its sentences, each whole."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def as_text(value: object) -> str:
    """A value as the text a template puts in: strings as is, numbers and booleans as YAML
    writes them; ParamError for anything else or a NUL character."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if not isinstance(value, str):
        raise ParamError([f"must be a string, number or boolean, got {describe(value)}"])
    if "\x00" in value:
        raise ParamError(["must not contain a NUL character"])
    return value


class ParamDecl(BaseModel):
    """One declared param. `default` is the value's own type (an int param's is an int)."""

    model_config = ConfigDict(frozen=True)

    type: ParamType = ParamType.STRING
    required: bool = False
    default: Scalar | None = None
    pattern: str | None = None
    min: int | None = None
    max: int | None = None
    choices: tuple[str, ...] = ()
    description: str | None = None

    @model_serializer
    def _as_declared(self) -> dict[str, Any]:
        """As a playbook would declare it (what `declaration` reads back): the type and every
        key that is not at its default."""
        out: dict[str, Any] = {"type": str(self.type)}
        if self.required:
            out["required"] = True
        for key in ("default", "pattern", "min", "max", "description"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.choices:
            out["choices"] = list(self.choices)
        return out

    @property
    def secret(self) -> bool:
        return self.type is ParamType.SECRET

    def wire(self, name: str) -> dict[str, Any]:
        """The declaration as the console's form reads it (absent values left out)."""
        return {"name": name, "required": self.required} | self.model_dump()

    def text(self, value: object) -> str:
        """`value` checked against this declaration, as the text templates put in; ParamError
        says why not, without ever showing a secret's value."""
        if self.type is ParamType.INT:
            return str(self._int(value))
        if self.type is ParamType.BOOL:
            return as_text(self._bool(value))
        if self.type is ParamType.SECRET:
            if not isinstance(value, str):
                raise ParamError([f"must be a string, got {_kind(value)}"])
            return as_text(value)
        text = as_text(value)
        if self.type is ParamType.CHOICE and text not in self.choices:
            raise ParamError([f"must be one of {', '.join(self.choices)}, got {shown(text)}"])
        if self.pattern is not None and not re.fullmatch(self.pattern, text):
            raise ParamError([f"must match the pattern {shown(self.pattern)}, got {shown(text)}"])
        return text

    def _int(self, value: object) -> int:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and _INT_RE.match(value.strip()):
            number = int(value.strip())
        if number is None:
            raise ParamError([f"must be a whole number, got {describe(value)}"])
        low, high = self.min, self.max
        if (low is not None and number < low) or (high is not None and number > high):
            raise ParamError([f"must be {_bounds(low, high)}, got {number}"])
        return number

    @staticmethod
    def _bool(value: object) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
        raise ParamError([f"must be true or false, got {describe(value)}"])


def _kind(value: object) -> str:
    """What a refused secret was, never what it was worth."""
    return describe(value) if not isinstance(value, str | int | float) else type(value).__name__


def _bounds(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"from {low} to {high}"
    return f"at least {low}" if low is not None else f"at most {high}"


def declaration(raw: object) -> ParamDecl:
    """A param's declaration from the playbook (a bare value, or a mapping with `type`);
    ParamError lists every problem of it."""
    if not isinstance(raw, Mapping):
        if isinstance(raw, list | tuple):
            raise ParamError(
                [f"must be a default value or a mapping with `type` ({_TYPES}), got a list"]
            )
        return ParamDecl(default=as_text(raw))
    problems: list[str] = []
    kind = _type_of(raw.get("type", ParamType.STRING), problems)
    fields: dict[str, Any] = {"type": kind or ParamType.STRING}
    allowed = (*_COMMON, *_OWN[kind]) if kind is not None else _ALL_KEYS
    for key, value in raw.items():
        if key not in _ALL_KEYS:
            problems.append(f"unknown key {shown(str(key))} (allowed: {', '.join(_ALL_KEYS)})")
        elif key not in allowed:
            problems.append(f"`{key}` does not apply to a {kind} param")
        elif key != "type":
            _field(str(key), value, fields, problems)
    _check_together(fields, problems)
    if problems:
        raise ParamError(problems)
    decl = ParamDecl(**{k: v for k, v in fields.items() if k != "default"})
    if "default" in fields:
        decl = _with_default(decl, fields["default"])
    return decl


def _type_of(value: object, problems: list[str]) -> ParamType | None:
    if isinstance(value, str) and value in ParamType.__members__.values():
        return ParamType(value)
    problems.append(f"unknown type {shown(str(value))} (one of {_TYPES})")
    return None


def _field(key: str, value: object, fields: dict[str, Any], problems: list[str]) -> None:
    """One key of a mapping declaration into `fields`, or its problem into `problems`."""
    if key == "required" and not isinstance(value, bool):
        problems.append(f"required must be true or false, got {describe(value)}")
    elif key in ("min", "max") and (not isinstance(value, int) or isinstance(value, bool)):
        problems.append(f"{key} must be a whole number, got {describe(value)}")
    elif key in ("pattern", "description") and not isinstance(value, str):
        problems.append(f"{key} must be a string, got {describe(value)}")
    elif key == "pattern" and isinstance(value, str) and (error := _regex_error(value)):
        problems.append(f"pattern {shown(value)} is not a regular expression: {error}")
    elif key == "choices":
        choices = _choices(value, problems)
        if choices is not None:
            fields[key] = choices
    else:
        fields[key] = value


def _regex_error(pattern: str) -> str | None:
    try:
        re.compile(pattern)
    except re.error as e:
        return str(e)
    return None


def _choices(value: object, problems: list[str]) -> tuple[str, ...] | None:
    good = isinstance(value, list) and all(
        isinstance(c, str | int) and not isinstance(c, bool) for c in value
    )
    if not isinstance(value, list) or not good or not value:
        problems.append(f"choices must be a non-empty list of strings, got {describe(value)}")
        return None
    choices = tuple(str(c) for c in value)
    doubled = sorted({c for c in choices if choices.count(c) > 1})
    if doubled:
        problems.append(f"choices list {', '.join(doubled)} twice")
    return choices


def _check_together(fields: Mapping[str, Any], problems: list[str]) -> None:
    """What the keys of a declaration must be to one another."""
    low, high = fields.get("min"), fields.get("max")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        problems.append(f"min {low} is greater than max {high}")
    kind = fields["type"]
    if kind is ParamType.CHOICE and "choices" not in fields:
        problems.append("a choice param needs `choices`")
    if kind is ParamType.SECRET and "default" in fields:
        # A default is saved with the playbook: a secret must never be stored.
        problems.append("a secret param cannot have a default (it would be stored in clear)")


def _with_default(decl: ParamDecl, default: object) -> ParamDecl:
    try:
        decl.text(default)
    except ParamError as e:
        raise ParamError([f"default {p}" for p in e.problems]) from None
    if decl.type is ParamType.INT or decl.type is ParamType.BOOL:
        value: Scalar = decl._int(default) if decl.type is ParamType.INT else decl._bool(default)
    else:
        value = as_text(default)
    return decl.model_copy(update={"default": value})


def wire_params(section: object) -> list[dict[str, Any]]:
    """A playbook's `params` (parsed) as the console's form reads them, in order; a
    declaration this refuses is left out (no saved playbook has one)."""
    out: list[dict[str, Any]] = []
    for name, raw in section.items() if isinstance(section, Mapping) else ():
        try:
            out.append(declaration(raw).wire(str(name)))
        except ParamError:
            continue
    return out
