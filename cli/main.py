"""`cloudops`: run, tail, cancel and list executions; start a worker or the relay.

Three modes for run/tail/cancel/ls, chosen once from the settings (cli.sessions):
- remote (`--remote URL` or CLOUDOPS_API_URL): through the relay's HTTP API;
- fleet (CLOUDOPS_REDIS_URL): submit to Celery and read events from Redis directly;
- embedded (neither): the same, on an in-process Redis with tasks run in threads here.
"""

from __future__ import annotations

import secrets
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import redis
import typer

from cli import history
from cli.options import JsonEnvelopes, JsonRows, Remote, on_session
from cli.playbooks import playbook_cli
from cli.render import (
    EXIT_CANCELLED,
    EXIT_USAGE,
    follow_with_cancel,
    lines_of,
    print_list,
    render,
    render_hosts,
)
from cli.schedules import schedule_cli
from cli.sessions import open_session
from cli.tokens import audit, token_cli
from cli.usage import fail as _fail
from cli.usage import fail_each
from cli.usage import settings_or_fail as _settings
from events.db.search import SearchFilter, check_limit
from events.errors import CloudOpsError, ConfigError, InvalidRequestError, ProblemsError
from events.hosts import parse_labels
from events.models import MAX_TIMEOUT_S
from events.requests import command_playbook, parse_targets
from events.rerun import RerunHosts
from events.settings import Settings
from events.vocabulary import CommandType, Status
from worker.playbook.params import parse_param_args

cli = typer.Typer(
    name="cloudops",
    help="Run ops commands and playbooks on a Celery fleet and stream every event live.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# -- commands -----------------------------------------------------------------------------


@cli.command(context_settings={"allow_interspersed_args": False})
def run(
    command: Annotated[list[str] | None, typer.Argument(help="the command, after --")] = None,
    playbook: Annotated[Path | None, typer.Option("--playbook", help="a playbook YAML")] = None,
    playbook_name: Annotated[
        str | None, typer.Option("--playbook-name", help="a saved playbook (cloudops playbook)")
    ] = None,
    version: Annotated[
        int | None, typer.Option("--version", min=1, help="of --playbook-name; default latest")
    ] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="K=V, repeatable")] = None,
    as_json: JsonEnvelopes = False,
    working_dir: Annotated[str | None, typer.Option("--working-dir")] = None,
    timeout: Annotated[int | None, typer.Option("--timeout", help="seconds")] = None,
    aws_profile: Annotated[str | None, typer.Option("--aws-profile")] = None,
    aws_region: Annotated[str | None, typer.Option("--aws-region")] = None,
    remote: Remote = None,
    targets: Annotated[
        list[str] | None,
        typer.Option("--targets", help="queue=Q, hosts=A,B or label=K=V: on every such host"),
    ] = None,
) -> None:
    """Run a command (`cloudops run -- CMD ARGS...`) or a playbook and stream it live."""
    settings = _settings()
    if version is not None and playbook_name is None:
        raise _fail("--version is for --playbook-name")
    options: dict[str, Any] = {
        "workingDir": working_dir,
        "timeout": timeout,
        "awsProfile": aws_profile,
        "awsRegion": aws_region,
    }
    body = _run_body(command, playbook, playbook_name, version, param, options)
    if targets and "command" not in body:
        raise _fail("--targets is for a command; a playbook's steps name their targets")
    try:
        if targets:
            adhoc = command_playbook(body["command"], body["options"], parse_targets(targets))
            body = {"commandType": CommandType.PLAYBOOK, "playbook": adhoc}
        if isinstance(body.get("params"), list):
            body["params"] = parse_param_args(body["params"])
        session = open_session(settings, remote)
        execution_id = session.submit(body)
        if not as_json:
            sys.stderr.write(f"[cloudops] execution {execution_id}\n")
        outcome = follow_with_cancel(session, execution_id, as_json=as_json)
        session.ended(execution_id)
    except ProblemsError as e:
        raise fail_each(e.problems) from e
    except (InvalidRequestError, ConfigError) as e:
        # ConfigError: saved playbooks asked for where there is no database (NoDatabaseError).
        raise _fail(str(e)) from e
    except CloudOpsError as e:
        raise _fail(str(e), 1) from e
    raise typer.Exit(outcome.process_exit)


def _run_body(
    command: list[str] | None,
    playbook: Path | None,
    playbook_name: str | None,
    version: int | None,
    param: list[str] | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """The POST /api/executions body of `cloudops run`'s arguments; bad usage exits 2."""
    body: dict[str, Any]
    if playbook_name is not None:
        if command or playbook is not None:
            raise _fail("give one of a command, --playbook or --playbook-name")
        body = {"playbookName": playbook_name, "params": param or []}
        if version is not None:
            body["version"] = version
        return body
    if playbook is not None:
        if command:
            raise _fail("give either a command or --playbook, not both")
        try:
            text = playbook.read_text()
        except OSError as e:
            raise _fail(f"cannot read playbook {playbook}: {e.strerror}") from e
        return {
            "commandType": CommandType.PLAYBOOK,
            "playbook": text,
            "params": param or [],
            "source": str(playbook),
        }
    if not command:
        raise _fail("no command given: cloudops run -- CMD ARGS...")
    if param:
        raise _fail("--param is for playbooks")
    timeout = options.get("timeout")
    if timeout is not None and not 1 <= timeout <= MAX_TIMEOUT_S:
        raise _fail(f"--timeout must be from 1 to {MAX_TIMEOUT_S} seconds")
    return {
        "command": command[0] if len(command) == 1 else shlex.join(command),
        "commandType": CommandType.of_command(command[0]),
        "options": {k: v for k, v in options.items() if v is not None},
    }


@cli.command()
def tail(execution_id: str, as_json: JsonEnvelopes = False, remote: Remote = None) -> None:
    """Follow an execution from its first event to its end."""
    outcome = on_session(remote, lambda s: render(s.follow(execution_id), as_json=as_json))
    raise typer.Exit(outcome.process_exit)


@cli.command()
def cancel(execution_id: str, remote: Remote = None) -> None:
    """Cancel a queued or running execution."""
    on_session(remote, lambda s: s.cancel(execution_id))
    sys.stderr.write(f"[cloudops] cancel requested for {execution_id}\n")


@cli.command()
def rerun(
    execution_id: str,
    failed: Annotated[
        bool, typer.Option("--failed", help="only the failed hosts (default: every host)")
    ] = False,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", help="K=V of a secret param, given again; repeatable"),
    ] = None,
    as_json: JsonEnvelopes = False,
    remote: Remote = None,
) -> None:
    """Rerun an ended execution from its first step that did not succeed, and follow it."""
    try:
        session = open_session(_settings(), remote)
        hosts = RerunHosts.FAILED if failed else RerunHosts.ALL
        params = parse_param_args(param) if param else None
        new_id = session.rerun(execution_id, hosts, params)
        if not as_json:
            sys.stderr.write(f"[cloudops] execution {new_id} (rerun of {execution_id})\n")
        outcome = follow_with_cancel(session, new_id, as_json=as_json)
        session.ended(new_id)
    except (CloudOpsError, ConfigError) as e:
        # Unknown, still running, nothing to rerun: bad input for this command (exit 2).
        raise _fail(str(e)) from e
    raise typer.Exit(outcome.process_exit)


@cli.command("ls")
def list_executions(
    status: Annotated[Status | None, typer.Option("--status")] = None,
    command_type: Annotated[CommandType | None, typer.Option("--command-type")] = None,
    q: Annotated[str | None, typer.Option("--q", help="substring of the command")] = None,
    host: Annotated[str | None, typer.Option("--host")] = None,
    submitted_by: Annotated[str | None, typer.Option("--submitted-by")] = None,
    since: Annotated[str | None, typer.Option("--since", help="RFC 3339")] = None,
    until: Annotated[str | None, typer.Option("--until", help="RFC 3339")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 20,
    cursor: Annotated[str | None, typer.Option("--cursor", help="from a previous page")] = None,
    as_json: JsonRows = False,
    remote: Remote = None,
) -> None:
    """List executions, newest first, with the relay list's filters (CONTRACT §8)."""
    try:
        # The relay list's query string, so that local and --remote filter alike.
        query = {"status": status, "commandType": command_type, "q": q, "host": host}
        query |= {"submittedBy": submitted_by, "since": since, "until": until}
        filt = SearchFilter.from_query(query)
        page_limit = check_limit(limit)
    except CloudOpsError as e:
        raise _fail(str(e)) from e
    records, next_cursor = on_session(remote, lambda s: s.records(filt, page_limit, cursor))
    print_list(records, as_json=as_json, text=lines_of(_record_line))
    if next_cursor:
        sys.stderr.write(f"[cloudops] more: --cursor {next_cursor}\n")


def _record_line(rec: dict[str, Any]) -> str:
    """One execution of `cloudops ls`: id, status, queued at, who started it, the command."""
    return (
        f"{rec['executionId']}  {rec['status']:<9}  {rec.get('queuedAt', ''):<27}  "
        f"{rec.get('submittedBy') or '-':<16}  {rec['command'][:60]}"
    )


cli.add_typer(playbook_cli, name="playbook")
cli.add_typer(schedule_cli, name="schedule")
cli.add_typer(token_cli, name="token")
cli.command("audit")(audit)

db = typer.Typer(help="The history database: migrate it, apply retention.", no_args_is_help=True)
cli.add_typer(db, name="db")


@db.command("upgrade")
def db_upgrade() -> None:
    """Migrate CLOUDOPS_DATABASE_URL (or embedded mode's SQLite file) to this version."""
    try:
        where = history.upgrade(_settings())
    except CloudOpsError as e:
        raise _fail(str(e)) from e
    sys.stderr.write(f"[cloudops] history database {where} is up to date\n")


@db.command("prune")
def db_prune() -> None:
    """Delete what CLOUDOPS_RETENTION_DAYS allows, keeping the newest RETENTION_MIN_KEEP."""
    settings = _settings()
    if not settings.database_url and not settings.embedded:
        raise _fail("CLOUDOPS_DATABASE_URL is not set: history lives in Redis only")
    try:
        n = history.prune(settings)
    except CloudOpsError as e:
        raise _fail(str(e)) from e
    sys.stderr.write(f"[cloudops] pruned {n} executions\n")


def _check_schema(settings: Settings) -> None:
    """Relays and workers refuse a history schema that is behind: one line, exit 2."""
    try:
        history.check_schema(settings)
    except CloudOpsError as e:
        raise _fail(str(e)) from e


@cli.command()
def worker(
    queues: Annotated[str | None, typer.Option("--queues", help="Q1,Q2")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency")] = None,
    hostname: Annotated[str | None, typer.Option("--hostname", help="as Celery's -n")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="K=V, repeatable")] = None,
    loglevel: Annotated[str, typer.Option("--loglevel")] = "INFO",
) -> None:
    """Start a Celery worker that runs commands and playbook steps."""
    from cli.worker import run_worker

    try:
        labels = parse_labels(label or [])
    except InvalidRequestError as e:
        raise _fail(str(e)) from e
    settings = _settings()
    if settings.embedded:
        raise _fail("CLOUDOPS_REDIS_URL is not set: a worker needs Redis")
    _check_schema(settings)
    run_worker(
        settings,
        queues=queues,
        concurrency=concurrency,
        hostname=hostname,
        loglevel=loglevel,
        labels=labels,
    )


@cli.command()
def scheduler(
    max_interval: Annotated[float, typer.Option("--max-interval", min=0.1)] = 1.0,
) -> None:
    """Start a scheduler (Celery beat on celery-redbeat): runs the schedules, one tick at a
    time fleet-wide however many run."""
    from cli.scheduler import run_scheduler

    settings = _settings()
    if settings.redis_url is None:
        # redbeat takes a Sentinel URL of its own form: not wired yet.
        raise _fail("CLOUDOPS_REDIS_URL is not set: a scheduler needs Redis (not Sentinel)")
    if not settings.database_url:
        raise _fail("CLOUDOPS_DATABASE_URL is not set: schedules live in the history database")
    _check_schema(settings)
    run_scheduler(settings, max_interval)


@cli.command("workers")
def list_workers(as_json: JsonRows = False, remote: Remote = None) -> None:
    """List the fleet's workers (hosts): online state, queues, labels, running, last seen."""
    print_list(on_session(remote, lambda s: s.workers()), as_json=as_json, text=render_hosts)


@cli.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def flower(ctx: typer.Context) -> None:
    """Start Flower on this fleet's broker (extra arguments go to Flower, e.g. --port=5555)."""
    from worker.app import configure

    settings = _settings()
    if settings.embedded and settings.broker_url is None:
        raise _fail("CLOUDOPS_REDIS_URL (or CLOUDOPS_BROKER_URL) is not set")
    # Through our app, so Flower uses the same broker key prefix as the workers.
    configure(settings).start(["flower", *ctx.args])


@cli.command()
def relay(
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    embedded: Annotated[bool, typer.Option("--embedded", help="no Redis, no worker")] = False,
) -> None:
    """Start the relay: HTTP API, SSE, WebSocket and the web console."""
    from api.server import serve
    from cli.relay import relay_app

    settings = _settings()
    if embedded:
        settings = settings.with_(redis_url=None, broker_url=None, redis_sentinels=())
    _check_schema(settings)
    if settings.embedded and not settings.api_tokens:
        # A token for this run, in a file only this user can read (never in a log line).
        token = secrets.token_urlsafe(24)
        path = Path.home() / ".cloudops" / "embedded-token"
        path.parent.mkdir(mode=0o700, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(token + "\n")
        settings = settings.with_(api_tokens=(token,))
        sys.stderr.write(f"[cloudops] embedded relay: API token for this run in {path}\n")
    # The relay's limits on connections and headers, and a short graceful shutdown.
    serve(relay_app(settings), settings, host=host, port=port)


def main() -> None:
    try:
        rc = cli(standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(EXIT_CANCELLED)
    except typer.TyperException as e:
        # Usage errors: one clear line, exit 2 (not click's multi-line usage block).
        fmt = getattr(e, "format_message", None)
        message = fmt() if callable(fmt) else str(e)
        sys.stderr.write(f"cloudops: error: {message}\n")
        sys.exit(EXIT_USAGE)
    except redis.RedisError as e:
        # Redis down (or between two masters for longer than the clients retry): one line
        # naming it, not a traceback; exit 1 as `run` does for what is not bad input.
        sys.stderr.write(f"cloudops: error: the event store (Redis) is unavailable: {e}\n")
        sys.exit(1)
    sys.exit(rc if isinstance(rc, int) else 0)
