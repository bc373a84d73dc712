"""How a step's command runs: aws_cli without a shell (params per argument), else bash."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from events.vocabulary import CommandType
from worker.playbook.shell import render_script, script_contexts
from worker.playbook.shell_scanner import ShellContext
from worker.playbook.templates import (
    ParamRef,
    Template,
    TemplateError,
    characters,
    parse_template,
    render_plain,
)

_BLANKS = " \t"
_PLACEHOLDER_RE = re.compile("\x00(\\d+)\x00")


def _needs_shell(template: Template) -> bool:
    """True if the command uses shell syntax (pipes, redirections, expansions, globs, ...)."""
    quote: str | None = None
    word_start = True
    items = characters(template)
    i = 0
    while i < len(items):
        c = items[i]
        i += 1
        if isinstance(c, ParamRef):
            word_start = False
            continue
        if quote == "'":
            quote = None if c == "'" else quote
            continue
        if quote == '"':
            if c == "\\":
                i += 1
            elif c == '"':
                quote = None
            elif c in "$`":
                return True
            continue
        if c == "\\":
            if i < len(items) and items[i] == "\n":
                return True
            i += 1
        elif c in "'\"":
            quote = c
        elif c in "|&;<>()$`\n*?[" or (c in "#~" and word_start):
            return True
        elif c in _BLANKS:
            word_start = True
            continue
        word_start = False
    return False


def _starts_with_aws(template: Template) -> bool:
    first = template[0] if template else None
    if not isinstance(first, str):
        return False
    m = re.match(r"\s*aws", first)
    if m is None:
        return False
    rest = first[m.end() :]
    # "aws{{ params.x }}" is one word that is not `aws`.
    return rest[0].isspace() if rest else len(template) == 1


def aws_argv_template(template: Template) -> tuple[Template, ...] | None:
    """The argument templates if this is a plain `aws ...` command, else None (a script).

    Splits the template (not the values) into words, so a value lands inside one argument.
    """
    if not _starts_with_aws(template) or _needs_shell(template):
        return None
    refs = [p for p in template if isinstance(p, ParamRef)]
    marked = []
    n = 0
    for part in template:
        if isinstance(part, ParamRef):
            marked.append(f"\x00{n}\x00")
            n += 1
        else:
            marked.append(part)
    try:
        words = shlex.split("".join(marked))
    except ValueError as e:
        raise TemplateError(f"cannot split the command into arguments: {e}") from e
    if not words or words[0] != "aws":
        return None  # `aws` was quoted or escaped: let bash read it
    args: list[Template] = []
    seen = 0
    for word in words:
        pieces = _PLACEHOLDER_RE.split(word)
        arg: list[str | ParamRef] = []
        for k, piece in enumerate(pieces):
            if k % 2:
                arg.append(refs[int(piece)])
                seen += 1
            elif piece:
                arg.append(piece)
        if any(isinstance(p, str) and "\x00" in p for p in arg):
            seen = -1
        args.append(tuple(arg))
    if seen != len(refs):
        raise TemplateError("a {{ params.x }} is escaped by a backslash in an aws command")
    return tuple(args)


@dataclass(frozen=True, slots=True)
class CommandPlan:
    """A command template checked and ready to render with values."""

    template: Template
    command_type: CommandType
    argv: tuple[Template, ...] | None
    contexts: tuple[ShellContext, ...] | None

    def render(self, values: Mapping[str, str]) -> tuple[str, tuple[str, ...] | None, str | None]:
        """(display text, argv for aws_cli, script for script steps)."""
        display = render_plain(self.template, values)
        if self.argv is not None:
            return display, tuple(render_plain(arg, values) for arg in self.argv), None
        assert self.contexts is not None
        return display, None, render_script(self.template, self.contexts, values)


def plan_command(text: str) -> CommandPlan:
    """Parse and check a step's command; raise TemplateError with the reason if it is unusable."""
    if "\x00" in text:
        raise TemplateError("contains a NUL character")
    template = parse_template(text)
    argv = aws_argv_template(template)
    if argv is not None:
        return CommandPlan(template, CommandType.AWS_CLI, argv, None)
    return CommandPlan(template, CommandType.SCRIPT, None, tuple(script_contexts(template)))
