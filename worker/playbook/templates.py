"""`{{ params.name }}` templates in playbook fields: parsing, the params they use, plain
rendering. How a value is put into a command without becoming code is worker.playbook.shell
(scripts) and worker.playbook.command (aws_cli argument vectors)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

PARAM_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# One expression between `{{` and `}}`: a param, or a quoted literal (to write a literal `{{`).
_EXPR_RE = re.compile(
    r"\{\{\s*(?:params\.(?P<name>[A-Za-z_][A-Za-z0-9_]*)|'(?P<sq>[^']*)'|\"(?P<dq>[^\"]*)\")\s*\}\}"
)
_SNIPPET_CHARS = 40


class TemplateError(ValueError):
    """A template or the command around it cannot be used; the message says why."""


@dataclass(frozen=True, slots=True)
class ParamRef:
    """A `{{ params.name }}` in a template."""

    name: str

    def __str__(self) -> str:
        return "{{ params." + self.name + " }}"


Template = tuple[str | ParamRef, ...]


def parse_template(text: str) -> Template:
    """Split `text` into literal text and param references; raise TemplateError if malformed."""
    parts: list[str | ParamRef] = []
    literal: list[str] = []
    pos = 0
    while True:
        start = text.find("{{", pos)
        if start < 0:
            literal.append(text[pos:])
            break
        literal.append(text[pos:start])
        m = _EXPR_RE.match(text, start)
        if m is None:
            raise TemplateError(_malformed(text, start))
        if m.group("name") is not None:
            if literal:
                parts.append("".join(literal))
                literal = []
            parts.append(ParamRef(m.group("name")))
        else:
            literal.append(m.group("sq") if m.group("sq") is not None else m.group("dq"))
        pos = m.end()
    if literal:
        parts.append("".join(literal))
    return tuple(p for p in parts if p != "")


def _malformed(text: str, start: int) -> str:
    end = text.find("}}", start)
    snippet = text[start : end + 2] if end >= 0 else text[start : start + _SNIPPET_CHARS]
    snippet = snippet if len(snippet) <= _SNIPPET_CHARS else snippet[:_SNIPPET_CHARS] + "..."
    where = f"malformed template {snippet!r} at character {start + 1}"
    if end < 0:
        return f"{where}: '{{{{' is never closed by '}}}}'"
    inner = text[start + 2 : end].strip()
    if inner.startswith("params."):
        return (
            f"{where}: a param name is letters, digits and '_' and does not start with a digit,"
            " as in {{ params.region }}"
        )
    return (
        f"{where}: only {{{{ params.NAME }}}} is supported"
        " (write {{ '{{' }} for a literal '{{')"
    )


def param_names(template: Template) -> list[str]:
    """The params a template uses, in order of first use."""
    return list(dict.fromkeys(p.name for p in template if isinstance(p, ParamRef)))


def render_plain(template: Template, values: Mapping[str, str]) -> str:
    """The template with each value put in as is (for display, env values, paths)."""
    return "".join(values[p.name] if isinstance(p, ParamRef) else p for p in template)


def characters(template: Template) -> list[str | ParamRef]:
    """The template as single characters and param references, for the scanners."""
    items: list[str | ParamRef] = []
    for part in template:
        if isinstance(part, ParamRef):
            items.append(part)
        else:
            items.extend(part)
    return items
