"""What `cloudops` commands spell alike: the `--remote` and `--json` options, a call of the
session `--remote` chooses (its refusal one line and exit 2), and the `ls` of a kind of thing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from cli.render import lines_of, print_list
from cli.sessions import Session, open_session
from cli.usage import fail, settings_or_fail
from events.errors import CloudOpsError

T = TypeVar("T")

Remote = Annotated[str | None, typer.Option("--remote", help="relay URL")]
# `--json` of a listing command, and of one that follows an execution (CONTRACT: envelopes).
JsonRows = Annotated[bool, typer.Option("--json", help="one object per line")]
JsonEnvelopes = Annotated[bool, typer.Option("--json", help="one envelope per line")]


def on_session(remote: str | None, call: Callable[[Session], T]) -> T:
    """`call` on the session of `--remote` (cli.sessions.open_session); a CloudOpsError it
    raises is bad input for the command: one line on stderr, exit 2."""
    try:
        return call(open_session(settings_or_fail(), remote))
    except CloudOpsError as e:
        raise fail(str(e)) from e


def add_listing(
    app: typer.Typer,
    rows: Callable[[Session], list[dict[str, Any]]],
    line: Callable[[dict[str, Any]], str],
    doc: str,
) -> None:
    """`app`'s `ls [--json] [--remote URL]`: what `rows` reads, one line each by `line` (one
    object per line with `--json`)."""

    def ls(as_json: JsonRows = False, remote: Remote = None) -> None:
        print_list(on_session(remote, rows), as_json=as_json, text=lines_of(line))

    app.command("ls", help=doc)(ls)
