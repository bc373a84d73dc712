"""`cloudops schedule add|ls|rm` (CONTRACT §10), through the relay with `--remote` (or
CLOUDOPS_API_URL), else in this process's history database."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from cli.options import Remote, add_listing, on_session
from cli.sessions import open_session
from cli.usage import fail as _fail
from cli.usage import fail_each as _fail_each
from cli.usage import settings_or_fail as _settings
from events.errors import CloudOpsError, ProblemsError
from events.requests import split_pair

schedule_cli = typer.Typer(
    help="Schedules of saved playbooks: add, list, remove.", no_args_is_help=True
)


@schedule_cli.command("add")
def add(
    playbook_name: Annotated[str, typer.Argument(help="a saved playbook (cloudops playbook)")],
    cron: Annotated[str | None, typer.Option("--cron", help="5 fields: '*/5 * * * *'")] = None,
    timezone: Annotated[str, typer.Option("--timezone", help="of --cron")] = "UTC",
    interval: Annotated[int | None, typer.Option("--interval", help="seconds")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="K=V, repeatable")] = None,
    disabled: Annotated[bool, typer.Option("--disabled", help="add it paused")] = False,
    remote: Remote = None,
) -> None:
    """Schedule PLAYBOOK_NAME every --interval seconds or on --cron; prints its id."""
    if (cron is None) == (interval is None):
        raise _fail("give one of --cron and --interval")
    body: dict[str, Any] = {"playbookName": playbook_name, "timezone": timezone}
    body |= {"enabled": not disabled, "cron": cron, "intervalS": interval}
    try:
        body["params"] = dict(split_pair(p, "param") for p in param or [])
        made = open_session(_settings(), remote).add_schedule(
            {k: v for k, v in body.items() if v is not None}
        )
    except ProblemsError as e:
        raise _fail_each(e.problems) from e
    except CloudOpsError as e:
        raise _fail(str(e)) from e
    sys.stderr.write(f"[cloudops] schedule {made['id']}, next run {made.get('nextRunAt')}\n")
    sys.stdout.write(f"{made['id']}\n")


def _line(row: dict[str, Any]) -> str:
    when = row.get("cron") and f"cron {row['cron']} {row['timezone']}"
    when = when or f"every {row['intervalS']}s"
    state = row.get("nextRunAt", "disabled")
    return f"{row['id']}  {row['playbookName']:<24}  {when:<28}  next {state}"


add_listing(
    schedule_cli, lambda s: s.schedules(), _line, "List schedules with their next run times."
)


@schedule_cli.command("rm")
def rm(schedule_id: str, remote: Remote = None) -> None:
    """Remove a schedule (runs it started keep their records)."""
    on_session(remote, lambda s: s.delete_schedule(schedule_id))
    sys.stderr.write(f"[cloudops] removed schedule {schedule_id}\n")
