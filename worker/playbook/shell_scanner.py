"""Reads a script template the way bash does, as far as quoting goes (see worker.playbook.shell)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from worker.playbook.templates import ParamRef, TemplateError


class ShellContext(StrEnum):
    """Where a value sits in a script, which decides how it is quoted."""

    UNQUOTED = "unquoted"
    DOUBLE_QUOTED = "double-quoted"
    SINGLE_QUOTED = "single-quoted"
    ANSI_C = "ansi-c"
    COMMENT = "comment"


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


class ShellScanner:
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
        nxt = self.peek(i + 1)
        for handler in (
            self._top_quoting,
            self._top_separator,
            self._top_group,
            self._top_redirect,
        ):
            j = handler(i, c, nxt)
            if j is not None:
                return j
        self.add_word(c)
        return i + 1

    def _top_quoting(self, i: int, c: str, nxt: str | ParamRef | None) -> int | None:
        """Escapes, quotes, substitutions and comments; None if `c` is none of those."""
        if c == "\\":
            self.refuse_before(i + 1, "a backslash")
            if nxt != "\n":
                self.add_word("\\" + (nxt if isinstance(nxt, str) else ""), plain=False)
            return i + 2
        opens: dict[str, FrameKind] = {"'": "sq", '"': "dq", "`": "bt"}
        if c in opens:
            self.push(opens[c])
            return i + 1
        if c == "$":
            if nxt in ("'", '"'):
                self.push("ansi" if nxt == "'" else "dq")
                return i + 2
            j = self.dollar(i)
            if j is not None:
                return j
            self.add_word("$", plain=False)
            return i + 1
        if c == "#" and not self.stack[-1].word_started:
            self.stack.append(_Frame("comment"))
            return i + 1
        return None

    def _top_separator(self, i: int, c: str, nxt: str | ParamRef | None) -> int | None:
        """Blanks end a word; newlines and ;&| end a command too."""
        if c in _BLANKS:
            self.end_word()
            return i + 1
        if c == "\n" or c in ";&|":
            self.end_word()
            self.end_command()
            if c == "\n" and self.pending_heredocs:
                self.heredoc = self.pending_heredocs.pop(0)
                self.heredoc_line = ""
            return i + 1
        return None

    def _top_group(self, i: int, c: str, nxt: str | ParamRef | None) -> int | None:
        """Parentheses: sub-shells, arithmetic, the end of a command substitution."""
        frame = self.stack[-1]
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
        return None

    def _top_redirect(self, i: int, c: str, nxt: str | ParamRef | None) -> int | None:
        """Redirections, here-documents and process substitutions."""
        if c not in "<>":
            return None
        self.end_word()
        if nxt == "(":
            self.push("subst")  # process substitution
            return i + 2
        if c == "<" and nxt == "<":
            if self.peek(i + 2) == "<":
                return i + 3  # here-string: its word is an ordinary word
            return self.heredoc_operator(i + 2)
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
