"""`cloudops token create|ls|revoke` and `cloudops audit`: named API tokens and the audit log
(CONTRACT §9), through the relay with `--remote` (or CLOUDOPS_API_URL; an admin's token), else
in this process's history database."""

from __future__ import annotations

import re
import sys
from typing import Annotated, Any

import typer

from cli.options import JsonRows, Remote, add_listing, on_session
from cli.render import lines_of, print_list
from cli.usage import fail as _fail
from events.vocabulary import Role

token_cli = typer.Typer(help="Named API tokens: create, list, revoke.", no_args_is_help=True)

_DURATION = re.compile(r"(\d+)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration_s(text: str) -> int:
    """`30d`, `12h`, `15m`, `90s` in seconds; a bad one is one line and exit 2."""
    m = _DURATION.fullmatch(text.strip())
    if m is None or int(m.group(1)) == 0:
        raise _fail(f"--expires: expected a duration such as 30d, 12h, 15m or 90s, got {text!r}")
    return int(m.group(1)) * _UNIT_S[m.group(2)]


@token_cli.command("create")
def create(
    name: str,
    role: Annotated[Role, typer.Option("--role", help="viewer, operator or admin")],
    queues: Annotated[
        str | None, typer.Option("--queues", help="Q1,Q2: only executions on these queues")
    ] = None,
    expires: Annotated[str | None, typer.Option("--expires", help="e.g. 30d, 12h")] = None,
    remote: Remote = None,
) -> None:
    """Create a token; its secret is printed once, on stdout, and kept nowhere."""
    body: dict[str, Any] = {"name": name, "role": str(role)}
    if queues is not None:
        body["queues"] = queues.split(",")
    if expires is not None:
        body["expiresInS"] = duration_s(expires)
    token = on_session(remote, lambda s: s.create_token(body))
    scope = ",".join(token["queues"]) if token["queues"] else "every queue"
    until = token["expiresAt"] or "never"
    sys.stderr.write(
        f"[cloudops] token {token['name']}: {token['role']} on {scope}, expires {until};"
        " the secret below is shown once\n"
    )
    sys.stdout.write(token["secret"] + "\n")


def _token_line(t: dict[str, Any]) -> str:
    scope = ",".join(t["queues"]) if t["queues"] else "*"
    state = f"revoked {t['revokedAt']}" if t["revokedAt"] else f"expires {t['expiresAt'] or '-'}"
    return f"{t['name']:<24}  {t['role']:<8}  {scope:<20}  {state}"


add_listing(
    token_cli,
    lambda s: s.tokens(),
    _token_line,
    "List tokens (never a secret): name, role, queues, expiry or revocation.",
)


@token_cli.command("revoke")
def revoke(name: str, remote: Remote = None) -> None:
    """Revoke a token: refused from now on (every relay within seconds)."""
    on_session(remote, lambda s: s.revoke_token(name))
    sys.stderr.write(f"[cloudops] token {name} revoked\n")


def _audit_line(e: dict[str, Any]) -> str:
    target = e["target"] or "-"
    return (
        f"{e['at']:<27}  {e['actor']:<16}  {e['action']:<24}  {target:<26}  "
        f"{e['outcome']:<15}  {e['status']}  {e['client']}"
    )


def audit(
    actor: Annotated[str | None, typer.Option("--actor", help="a token's name")] = None,
    action: Annotated[str | None, typer.Option("--action", help="start, cancel, ...")] = None,
    since: Annotated[str | None, typer.Option("--since", help="RFC 3339")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    cursor: Annotated[str | None, typer.Option("--cursor", help="from a previous page")] = None,
    as_json: JsonRows = False,
    remote: Remote = None,
) -> None:
    """The audit log, newest first: who started, cancelled, reran, made or revoked what, and
    every refused request."""
    filters = {"actor": actor, "action": action, "since": since}
    given = {k: v for k, v in filters.items() if v is not None}
    rows, next_cursor = on_session(remote, lambda s: s.audit(given, limit, cursor))
    print_list(rows, as_json=as_json, text=lines_of(_audit_line))
    if next_cursor:
        sys.stderr.write(f"[cloudops] more: --cursor {next_cursor}\n")
