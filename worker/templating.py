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
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

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


# --- shell quoting -------------------------------------------------------------------------------


class ShellContext(StrEnum):
    """Where a value sits in a script, which decides how it is quoted."""

    UNQUOTED = "unquoted"
    DOUBLE_QUOTED = "double-quoted"
    SINGLE_QUOTED = "single-quoted"
    ANSI_C = "ansi-c"
    COMMENT = "comment"


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


_BLANKS = " \t"
_WORD_END = " \t\n;&|()<>"
_RESERVED_BEFORE_COMMAND = {"then", "do", "else", "elif", "if", "while", "until", "!", "{", "time"}
_ARITH_TEST_OPS = {"-eq", "-ne", "-lt", "-le", "-gt", "-ge"}
_SUBSCRIPT_WORD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\[")
_ASSIGNMENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\+?=")

FrameKind = Literal["top", "subst", "dq", "sq", "ansi", "bt", "arith", "bracket", "pexp", "comment"]


@dataclass
class _DoubleBracket:
    params: list[ParamRef] = field(default_factory=list)
    arith_op: str | None = None


@dataclass
class _Frame:
    kind: FrameKind
    depth: int = 0
    # Only for "top" and "subst": the word being read and where it stands.
    word: str = ""
    word_started: bool = False
    word_plain: bool = True
    command_start: bool = True
    in_let: bool = False
    test: _DoubleBracket | None = None


@dataclass
class _HereDoc:
    delimiter: str
    strip_tabs: bool


class _ShellScanner:
    """Reads a script template the way bash does, as far as quoting goes.

    It is not a bash parser: it follows quotes, substitutions, comments and here-documents,
    which is what decides how a value must be quoted, and refuses what it cannot be sure of.
    """

    def __init__(self, items: Sequence[str | ParamRef]) -> None:
        self.items = items
        self.stack: list[_Frame] = [_Frame("top")]
        self.contexts: list[ShellContext] = []
        self.pending_heredocs: list[_HereDoc] = []
        self.heredoc: _HereDoc | None = None
        self.heredoc_line = ""
        # Set when a `case` inside `$(...)` makes its `)` ambiguous for this scanner.
        self.uncertain_since: str | None = None

    def peek(self, i: int) -> str | ParamRef | None:
        return self.items[i] if i < len(self.items) else None

    def scan(self) -> list[ShellContext]:
        i = 0
        while i < len(self.items):
            item = self.items[i]
            if isinstance(item, ParamRef):
                self.contexts.append(self.param(item))
                i += 1
            elif self.heredoc is not None:
                self.heredoc_char(item)
                i += 1
            else:
                i = self.char(i, item)
        self.finish()
        return self.contexts

    # -- values --

    def param(self, ref: ParamRef) -> ShellContext:
        frame = self.stack[-1]
        if self.heredoc is not None:
            raise TemplateError(
                f"{ref} is inside a here-document, where a value could end the document;"
                " set it in the step's env (env: {NAME: '{{ params.x }}'}) and use \"$NAME\""
            )
        if self.uncertain_since is not None:
            raise TemplateError(
                f"{ref} comes after {self.uncertain_since} inside $(...), which this check"
                ' cannot follow; set the value in the step\'s env and use "$NAME"'
            )
        kind = frame.kind
        if kind in ("top", "subst"):
            if frame.in_let:
                raise TemplateError(f"{ref} is in a `let` expression, which bash runs as code")
            in_brackets = frame.word.startswith("[") and "]" not in frame.word  # a=([k]=v)
            if frame.word_plain and (_SUBSCRIPT_WORD_RE.match(frame.word) or in_brackets):
                raise TemplateError(
                    f"{ref} is in an array subscript, which bash evaluates as arithmetic code"
                )
            if frame.test is not None:
                frame.test.params.append(ref)
            frame.word_started = True
            frame.word_plain = False
            return ShellContext.UNQUOTED
        if kind == "dq":
            return ShellContext.DOUBLE_QUOTED
        if kind == "sq":
            return ShellContext.SINGLE_QUOTED
        if kind == "ansi":
            return ShellContext.ANSI_C
        if kind == "comment":
            return ShellContext.COMMENT
        if kind == "bt":
            raise TemplateError(f"{ref} is inside backticks; use $(...) instead")
        if kind in ("arith", "bracket"):
            raise TemplateError(
                f"{ref} is in an arithmetic expression, which bash evaluates as code;"
                " check the value is a number first (case $N in *[!0-9]*) exit 2;; esac)"
            )
        raise TemplateError(f"{ref} is inside ${{...}}; use it outside the braces")

    def refuse_before(self, i: int, what: str) -> None:
        nxt = self.peek(i)
        if isinstance(nxt, ParamRef):
            raise TemplateError(f"{nxt} comes right after {what}, which would change its meaning")

    # -- characters --

    def push(self, kind: FrameKind) -> None:
        outer = self.stack[-1]
        if outer.kind in ("top", "subst"):
            outer.word_started = True
            outer.word_plain = False
        self.stack.append(_Frame(kind))

    def char(self, i: int, c: str) -> int:
        kind = self.stack[-1].kind
        if kind in ("top", "subst"):
            return self.char_top(i, c)
        if kind == "dq":
            return self.char_dq(i, c)
        if kind == "sq":
            if c == "'":
                self.stack.pop()
            return i + 1
        if kind in ("ansi", "bt"):
            if c == "\\":
                self.refuse_before(i + 1, "a backslash")
                return i + 2
            if c == ("'" if kind == "ansi" else "`"):
                self.stack.pop()
            return i + 1
        if kind == "comment":
            if c == "\n":
                self.stack.pop()
                return i  # the newline ends the command too
            return i + 1
        if kind in ("arith", "bracket"):
            return self.char_arith(i, c)
        return self.char_pexp(i, c)

    def dollar(self, i: int) -> int | None:
        """Handle the expansions that start with `$` at i; None if the `$` is plain."""
        nxt = self.peek(i + 1)
        if nxt == "(":
            if self.peek(i + 2) == "(":
                self.push("arith")
                return i + 3
            self.push("subst")
            return i + 2
        if nxt == "{":
            self.push("pexp")
            return i + 2
        if nxt == "[":
            self.push("bracket")
            return i + 2
        self.refuse_before(i + 1, "'$'")
        return None

    def char_top(self, i: int, c: str) -> int:
        frame = self.stack[-1]
        nxt = self.peek(i + 1)
        if c == "\\":
            self.refuse_before(i + 1, "a backslash")
            if nxt != "\n":
                self.add_word("\\" + (nxt if isinstance(nxt, str) else ""), plain=False)
            return i + 2
        if c == "'":
            self.push("sq")
            return i + 1
        if c == '"':
            self.push("dq")
            return i + 1
        if c == "`":
            self.push("bt")
            return i + 1
        if c == "$":
            if nxt == "'":
                self.push("ansi")
                return i + 2
            if nxt == '"':
                self.push("dq")
                return i + 2
            j = self.dollar(i)
            if j is not None:
                return j
            self.add_word("$", plain=False)
            return i + 1
        if c == "#" and not frame.word_started:
            self.stack.append(_Frame("comment"))
            return i + 1
        if c in _BLANKS:
            self.end_word()
            return i + 1
        if c == "\n":
            self.end_word()
            self.end_command()
            if self.pending_heredocs:
                self.heredoc = self.pending_heredocs.pop(0)
                self.heredoc_line = ""
            return i + 1
        if c in ";&|":
            self.end_word()
            self.end_command()
            return i + 1
        if c in "<>" and nxt == "(":
            self.end_word()
            self.push("subst")  # process substitution
            return i + 2
        if c == "(":
            if not frame.word_started and frame.command_start and nxt == "(":
                self.push("arith")
                return i + 2
            self.end_word()
            self.end_command()
            if frame.kind == "subst":
                frame.depth += 1
            return i + 1
        if c == ")":
            self.end_word()
            if frame.kind == "subst":
                if frame.depth == 0:
                    self.stack.pop()
                    return i + 1
                frame.depth -= 1
            self.end_command()
            return i + 1
        if c == "<" and nxt == "<":
            self.end_word()
            if self.peek(i + 2) == "<":
                return i + 3  # here-string: its word is an ordinary word
            return self.heredoc_operator(i + 2)
        if c in "<>":
            self.end_word()
            return i + 1
        self.add_word(c)
        return i + 1

    def char_dq(self, i: int, c: str) -> int:
        if c == "\\":
            self.refuse_before(i + 1, "a backslash")
            return i + 2
        if c == '"':
            self.stack.pop()
            return i + 1
        if c == "`":
            self.push("bt")
            return i + 1
        if c == "$":
            j = self.dollar(i)
            return i + 1 if j is None else j
        return i + 1

    def char_arith(self, i: int, c: str) -> int:
        frame = self.stack[-1]
        if c == "$":
            j = self.dollar(i)
            return i + 1 if j is None else j
        opening, closing = ("(", ")") if frame.kind == "arith" else ("[", "]")
        if c == opening:
            frame.depth += 1
        elif c == closing:
            if frame.depth == 0:
                self.stack.pop()
                # `))` closes `$((`/`((`, `]` closes `$[`.
                return i + 2 if frame.kind == "arith" and self.peek(i + 1) == ")" else i + 1
            frame.depth -= 1
        return i + 1

    def char_pexp(self, i: int, c: str) -> int:
        frame = self.stack[-1]
        if c == "\\":
            self.refuse_before(i + 1, "a backslash")
            return i + 2
        if c == "'":
            self.push("sq")
        elif c == '"':
            self.push("dq")
        elif c == "`":
            self.push("bt")
        elif c == "$":
            j = self.dollar(i)
            return i + 1 if j is None else j
        elif c == "{":
            frame.depth += 1
        elif c == "}":
            if frame.depth == 0:
                self.stack.pop()
            else:
                frame.depth -= 1
        return i + 1

    # -- words and commands (only in "top" and "subst") --

    def add_word(self, text: str, *, plain: bool = True) -> None:
        frame = self.stack[-1]
        frame.word += text
        frame.word_started = True
        frame.word_plain = frame.word_plain and plain

    def end_word(self) -> None:
        frame = self.stack[-1]
        if not frame.word_started:
            return
        word = frame.word if frame.word_plain else None
        frame.word, frame.word_started, frame.word_plain = "", False, True
        at_command_start = frame.command_start
        frame.command_start = word in _RESERVED_BEFORE_COMMAND or (
            at_command_start and word is not None and bool(_ASSIGNMENT_RE.match(word))
        )
        if word is None:
            return
        if at_command_start and word == "let":
            frame.in_let = True
        elif at_command_start and word == "[[":
            frame.test = _DoubleBracket()
        elif frame.test is not None and word in _ARITH_TEST_OPS:
            frame.test.arith_op = word
        elif frame.test is not None and word == "]]":
            self.end_test(frame)
        if word == "case" and frame.kind == "subst" and self.uncertain_since is None:
            self.uncertain_since = "a `case`"

    def end_test(self, frame: _Frame) -> None:
        test, frame.test = frame.test, None
        if test is not None and test.params and test.arith_op is not None:
            raise TemplateError(
                f"{test.params[0]} is compared with {test.arith_op} inside [[ ]], where bash"
                " evaluates it as arithmetic code; use [ ... ] (single brackets) instead"
            )

    def end_command(self) -> None:
        frame = self.stack[-1]
        frame.command_start = True
        frame.in_let = False

    # -- here-documents --

    def heredoc_operator(self, j: int) -> int:
        """Read the delimiter after `<<` or `<<-` (j is just after `<<`)."""
        strip_tabs = self.peek(j) == "-"
        j += 1 if strip_tabs else 0
        while self.peek(j) in (" ", "\t"):
            j += 1
        delimiter: list[str] = []
        quote: str | None = None
        while True:
            item = self.peek(j)
            if isinstance(item, ParamRef):
                raise TemplateError(f"{item} cannot be a here-document delimiter")
            if item is None or (quote is None and item in _WORD_END):
                break
            j += 1
            if quote is not None:
                if item == quote:
                    quote = None
                else:
                    delimiter.append(item)
            elif item in "'\"":
                quote = item
            elif item == "\\":
                nxt = self.peek(j)
                if isinstance(nxt, str):
                    delimiter.append(nxt)
                    j += 1
            else:
                delimiter.append(item)
        if not delimiter:
            raise TemplateError("a here-document (<<) has no delimiter word")
        self.pending_heredocs.append(_HereDoc("".join(delimiter), strip_tabs))
        return j

    def heredoc_char(self, c: str) -> None:
        if c != "\n":
            self.heredoc_line += c
            return
        self.heredoc_line_done()

    def heredoc_line_done(self) -> None:
        doc = self.heredoc
        assert doc is not None
        line = self.heredoc_line.lstrip("\t") if doc.strip_tabs else self.heredoc_line
        self.heredoc_line = ""
        if line == doc.delimiter:
            self.heredoc = self.pending_heredocs.pop(0) if self.pending_heredocs else None

    def finish(self) -> None:
        if self.heredoc is not None and self.heredoc_line:
            self.heredoc_line_done()
        open_kinds = {f.kind for f in self.stack}
        for kind, what in (
            ("sq", "a single quote (') is never closed"),
            ("dq", 'a double quote (") is never closed'),
            ("ansi", "a $'...' quote is never closed"),
            ("bt", "a backtick (`) is never closed"),
        ):
            if kind in open_kinds:
                raise TemplateError(what)
        top = self.stack[0]
        if len(self.stack) == 1 and top.test is not None:
            self.end_word()
            self.end_test(top)


def _chars(template: Template) -> list[str | ParamRef]:
    items: list[str | ParamRef] = []
    for part in template:
        if isinstance(part, ParamRef):
            items.append(part)
        else:
            items.extend(part)
    return items


def script_contexts(template: Template) -> list[ShellContext]:
    """The shell context of each param of a script template, in order; TemplateError if one
    sits where quoting cannot keep it inert, or if a quote is never closed."""
    return _ShellScanner(_chars(template)).scan()


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


# --- aws_cli argument vectors --------------------------------------------------------------------

_PLACEHOLDER_RE = re.compile("\x00(\\d+)\x00")


def _needs_shell(template: Template) -> bool:
    """True if the command uses shell syntax (pipes, redirections, expansions, globs, ...)."""
    quote: str | None = None
    word_start = True
    items = _chars(template)
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
    command_type: Literal["aws_cli", "script"]
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
        return CommandPlan(template, "aws_cli", argv, None)
    return CommandPlan(template, "script", None, tuple(script_contexts(template)))
