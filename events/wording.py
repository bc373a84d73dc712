"""How a message shows a value it refuses: quoted, cut short, or described by its kind.

Shared by the playbook loader (worker/playbook) and the typed params (events.params), so that
every refusal reads the same."""

from __future__ import annotations

from collections.abc import Mapping

SHOWN_CHARS = 40


def shortened(text: str) -> str:
    """`text` cut short for a message, unquoted (a step id in its label, a key)."""
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def shown(text: str) -> str:
    """`text` quoted for a message, cut short: a problem is a line, not a dump of the input."""
    return repr(shortened(text))


def describe(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {shown(value)}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"
