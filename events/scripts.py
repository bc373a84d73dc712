"""The Lua scripts (`events/lua/*.lua`, package resources), with the vocabulary they share.

Each script is sent to Redis as a preamble that defines the tables `F` (record field names,
from `RecordField`), `S` (statuses) and `R` (transition outcomes), then, for the publish
scripts, `rules.lua` (the publish rules, written once), then its own body. So Python and Lua
name every field and status from one definition.
"""

from __future__ import annotations

import functools
import re
from enum import StrEnum
from importlib.resources import files

from events.vocabulary import Outcome, RecordField, Status

# Scripts that apply the publish rules (rules.lua) to events.
_WITH_RULES = frozenset({"publish", "plan"})


def _table(name: str, values: type[StrEnum]) -> str:
    items = ", ".join(f"{m.name}='{m.value}'" for m in values)
    return f"local {name} = {{{items}}}\n"


PREAMBLE = _table("F", RecordField) + _table("S", Status) + _table("R", Outcome)


def resource(name: str) -> str:
    return files("events.lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")


@functools.cache
def script(name: str) -> str:
    """The full text Redis runs for `events/lua/<name>.lua`."""
    rules = resource("rules") if name in _WITH_RULES else ""
    return PREAMBLE + rules + resource(name)


_NAME_RE = re.compile(r"\b([FSR])\.([A-Z_]+)\b")


def names_used(text: str) -> set[tuple[str, str]]:
    """(table, name) of every `F.X`, `S.X`, `R.X` in a Lua text (a test checks each exists)."""
    return set(_NAME_RE.findall(text))
