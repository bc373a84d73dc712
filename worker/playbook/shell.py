"""`{{ params.name }}` templates in playbook commands, and how a value is put into a command.

A value never becomes code:

- `aws_cli` steps: the template is split into arguments first (`shlex`), then each value is put
  inside its argument, so a value is never more or fewer arguments than the template says.
- `script` steps: the template is scanned as bash would read it, and each value is quoted for
  the place it sits in: `'...'` outside quotes, backslash escapes inside `"..."`, `'\\''` inside
  `'...'`, `\\` escapes inside `$'...'`. Places where quoting cannot keep a value inert are
  refused when the playbook loads: backticks, `$((...))`/`((...))`/`let`/`$[...]`, arithmetic
  comparisons in `[[ ]]`, array subscripts and `${...}` (bash evaluates those as code), here-
  document bodies (a value could end the document), and right after `$` or `\\`.

Commands that evaluate their own arguments again are beyond what quoting can protect: `eval`,
`sh -c`, `ssh host CMD`, and bash builtins that take a variable name (`unset`, `read`, `printf -v`,
`declare`, `test -v`) or assign an integer variable (`declare -i`), which evaluate `a[...]` in it.
Pass values to them through a step's `env` instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from worker.playbook.shell_scanner import ShellContext, ShellScanner
from worker.playbook.templates import ParamRef, Template, characters


def quote_for(context: ShellContext, value: str) -> str:
    """`value` written so that bash reads it back literally at a place of kind `context`."""
    if context is ShellContext.UNQUOTED:
        # shlex.quote's form, but always quoted: a bare word could join a brace expansion.
        return "'" + value.replace("'", "'\"'\"'") + "'"
    if context is ShellContext.DOUBLE_QUOTED:
        return re.sub(r'([\\$`"])', r"\\\1", value)
    if context is ShellContext.SINGLE_QUOTED:
        return value.replace("'", "'\\''")
    if context is ShellContext.ANSI_C:
        return value.replace("\\", "\\\\").replace("'", "\\'")
    # A comment ends at a newline: keep the value on the comment's line.
    return value.replace("\n", " ")


def script_contexts(template: Template) -> list[ShellContext]:
    """The shell context of each param of a script template, in order; TemplateError if one
    sits where quoting cannot keep it inert, or if a quote is never closed."""
    return ShellScanner(characters(template)).scan()


def render_script(
    template: Template, contexts: Sequence[ShellContext], values: Mapping[str, str]
) -> str:
    """The script with each value quoted for its context (from script_contexts)."""
    out: list[str] = []
    n = 0
    for part in template:
        if isinstance(part, ParamRef):
            out.append(quote_for(contexts[n], values[part.name]))
            n += 1
        else:
            out.append(part)
    return "".join(out)
