"""`cloudops`: run, tail, cancel and list executions; start a worker or the relay.

Three modes for run/tail/cancel/ls, chosen once from the settings:
- remote (`--remote URL` or CLOUDOPS_API_URL): through the relay's HTTP API;
- fleet (CLOUDOPS_REDIS_URL): submit to Celery and read events from Redis directly;
- embedded (neither): in-process execution with an in-memory bus, no Redis, no worker.
"""

from __future__ import annotations

import json
import secrets
import shlex
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer

from events.errors import CloudOpsError, InvalidRequestError, UnknownExecutionError
from events.models import ExecutionOptions, RawEvent
from events.settings import Settings
from worker.dispatch import Dispatcher

EXIT_USAGE = 2
EXIT_TIMEOUT = 124
EXIT_CANCELLED = 130

cli = typer.Typer(
    name="cloudops",
    help="Run ops commands and playbooks on a Celery fleet and stream every event live.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class UsageError(CloudOpsError):
    """Bad command-line usage: one line on stderr, exit 2."""


class Session(Protocol):
    def submit(self, body: dict[str, Any]) -> str: ...
    def follow(self, execution_id: str, after: int = 0) -> Iterator[RawEvent]: ...
    def cancel(self, execution_id: str) -> None: ...
    def records(self, status: str | None, limit: int) -> list[dict[str, Any]]: ...


def _options_from_body(body: dict[str, Any]) -> ExecutionOptions:
    try:
        return ExecutionOptions.model_validate(body.get("options") or {})
    except ValueError as e:
        raise InvalidRequestError("options", str(e).splitlines()[0]) from e


class _DispatcherSession:
    """A session over a Dispatcher of this process (fleet or embedded)."""

    dispatcher: Dispatcher

    def submit(self, body: dict[str, Any]) -> str:
        if body.get("commandType") == "playbook":
            return self.dispatcher.submit_playbook(
                body["playbook"], body.get("params"), source=body.get("source", "<request>")
            )
        return self.dispatcher.submit_command(
            body["command"], body["commandType"], _options_from_body(body)
        )

    def cancel(self, execution_id: str) -> None:
        self.dispatcher.cancel(execution_id)


class FleetSession(_DispatcherSession):
    """Submit to Celery and read events from Redis directly."""

    def __init__(self, settings: Settings) -> None:
        from worker.celery_dispatch import CeleryDispatcher

        self.fleet = CeleryDispatcher(settings)
        self.dispatcher = self.fleet

    def follow(self, execution_id: str, after: int = 0) -> Iterator[RawEvent]:
        from events.subscriber import Follower

        rt = self.fleet.rt
        if rt.records.get(execution_id) is None:
            raise UnknownExecutionError(execution_id)
        return iter(Follower(rt.redis, rt.keys, execution_id, after))

    def records(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        return [r.wire() for r in self.fleet.rt.records.recent(status=status, limit=limit)]


class EmbeddedSession(_DispatcherSession):
    """In-process execution with an in-memory bus."""

    def __init__(self, settings: Settings) -> None:
        from worker.embedded import EmbeddedDispatcher, MemoryBus

        self.bus = MemoryBus()
        self.dispatcher = EmbeddedDispatcher(settings, self.bus)

    def follow(self, execution_id: str, after: int = 0) -> Iterator[RawEvent]:
        return self.bus.follow(execution_id, after)

    def records(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        recs = [r.wire() for r in self.bus.records()]
        return [r for r in recs if status is None or r["status"] == status][:limit]


class RemoteSession:
    def __init__(self, url: str, token: str | None) -> None:
        from api.client import RelayClient

        self._client = RelayClient(url, token)

    def submit(self, body: dict[str, Any]) -> str:
        body = {k: v for k, v in body.items() if k != "source"}
        return self._client.submit(body)

    def follow(self, execution_id: str, after: int = 0) -> Iterator[RawEvent]:
        return self._client.follow(execution_id, after)

    def cancel(self, execution_id: str) -> None:
        self._client.cancel(execution_id)

    def records(self, status: str | None, limit: int) -> list[dict[str, Any]]:
        return self._client.list(status, limit)


def open_session(settings: Settings, remote: str | None) -> Session:
    url = remote or settings.api_url
    if url:
        return RemoteSession(url, settings.api_token)
    if settings.redis_url:
        return FleetSession(settings)
    return EmbeddedSession(settings)


# -- rendering --------------------------------------------------------------------------


@dataclass
class Outcome:
    status: str = "failed"
    exit_code: int | None = None
    duration_ms: int = 0
    error: str | None = None

    @property
    def process_exit(self) -> int:
        if self.status == "completed":
            return 0
        if self.status == "timeout":
            return EXIT_TIMEOUT
        if self.status == "cancelled":
            return EXIT_CANCELLED
        return self.exit_code if self.exit_code else 1


def render(events: Iterator[RawEvent], *, as_json: bool) -> Outcome:
    """Print an execution's events as they arrive; return how it ended."""
    outcome = Outcome()
    out, err = sys.stdout, sys.stderr
    for ev in events:
        if as_json:
            out.write(ev.data + "\n")
            out.flush()
        payload = json.loads(ev.data)["payload"] if ev.event != "execution_output" else None
        if ev.event == "execution_output":
            if as_json:
                continue
            p = json.loads(ev.data)["payload"]
            stream = err if p["stream"] == "stderr" else out
            stream.write(p["output"])
            stream.flush()
            if p.get("truncated"):
                err.write("\n[cloudops] output limit reached: later output is not kept\n")
        elif ev.event == "playbook_step_start" and payload is not None and not as_json:
            err.write(
                f"\u25b6 step {payload['stepNumber']}/{payload['totalSteps']}: "
                f"{payload['stepName']}\n"
            )
            err.flush()
        elif ev.event == "playbook_step_complete" and payload is not None and not as_json:
            mark = "\u2713" if payload["success"] else "\u2717"
            tail = "" if payload["success"] else f" ({payload.get('error') or 'failed'})"
            err.write(
                f"{mark} step {payload['stepNumber']} {payload['stepName']} "
                f"{payload['durationMs']} ms{tail}\n"
            )
            err.flush()
        elif ev.event == "execution_complete" and payload is not None:
            outcome = Outcome(
                status=payload["status"],
                exit_code=payload.get("exitCode"),
                duration_ms=payload["durationMs"],
                error=payload.get("error"),
            )
    if not as_json:
        summary = f"[cloudops] {outcome.status} in {outcome.duration_ms / 1000:.2f} s"
        if outcome.exit_code is not None:
            summary += f" (exit {outcome.exit_code})"
        if outcome.error:
            summary += f": {outcome.error}"
        err.write(summary + "\n")
    return outcome


def follow_with_cancel(session: Session, execution_id: str, *, as_json: bool) -> Outcome:
    """Render; the first Ctrl-C cancels the execution and keeps following to its end."""
    events = session.follow(execution_id)
    try:
        return render(events, as_json=as_json)
    except KeyboardInterrupt:
        sys.stderr.write("\n[cloudops] cancelling...\n")
        try:
            session.cancel(execution_id)
        except CloudOpsError as e:
            sys.stderr.write(f"[cloudops] {e}\n")
        return render(session.follow(execution_id), as_json=as_json)


# -- commands -----------------------------------------------------------------------------


def _settings() -> Settings:
    return Settings.from_env()


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    sys.stderr.write(f"cloudops: error: {message}\n")
    return typer.Exit(code)


@cli.command(context_settings={"allow_interspersed_args": False})
def run(
    command: Annotated[list[str] | None, typer.Argument(help="the command, after --")] = None,
    playbook: Annotated[Path | None, typer.Option("--playbook", help="a playbook YAML")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", help="K=V, repeatable")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one envelope per line")] = False,
    working_dir: Annotated[str | None, typer.Option("--working-dir")] = None,
    timeout: Annotated[int | None, typer.Option("--timeout", help="seconds")] = None,
    aws_profile: Annotated[str | None, typer.Option("--aws-profile")] = None,
    aws_region: Annotated[str | None, typer.Option("--aws-region")] = None,
    remote: Annotated[str | None, typer.Option("--remote", help="relay URL")] = None,
) -> None:
    """Run a command (`cloudops run -- CMD ARGS...`) or a playbook and stream it live."""
    settings = _settings()
    body: dict[str, Any]
    if playbook is not None:
        if command:
            raise _fail("give either a command or --playbook, not both")
        try:
            text = playbook.read_text()
        except OSError as e:
            raise _fail(f"cannot read playbook {playbook}: {e.strerror}") from e
        params = _parse_params(param or [])
        body = {"commandType": "playbook", "playbook": text, "params": params}
        body["source"] = str(playbook)
    else:
        if not command:
            raise _fail("no command given: cloudops run -- CMD ARGS...")
        if param:
            raise _fail("--param is for playbooks")
        text = command[0] if len(command) == 1 else shlex.join(command)
        first = command[0].split()[0] if command[0].split() else ""
        options: dict[str, Any] = {
            "workingDir": working_dir,
            "timeout": timeout,
            "awsProfile": aws_profile,
            "awsRegion": aws_region,
        }
        if timeout is not None and timeout < 1:
            raise _fail("--timeout must be a positive number of seconds")
        body = {
            "command": text,
            "commandType": "aws_cli" if first == "aws" else "script",
            "options": {k: v for k, v in options.items() if v is not None},
        }
    try:
        session = open_session(settings, remote)
        execution_id = session.submit(body)
        if not as_json:
            sys.stderr.write(f"[cloudops] execution {execution_id}\n")
        outcome = follow_with_cancel(session, execution_id, as_json=as_json)
    except InvalidRequestError as e:
        raise _fail(str(e)) from e
    except CloudOpsError as e:
        raise _fail(str(e), 1) from e
    raise typer.Exit(outcome.process_exit)


def _parse_params(items: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise _fail(f"--param must be K=V, got {item!r}")
        params[key.strip()] = value
    return params


@cli.command()
def tail(
    execution_id: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    remote: Annotated[str | None, typer.Option("--remote")] = None,
) -> None:
    """Follow an execution from its first event to its end."""
    try:
        session = open_session(_settings(), remote)
        outcome = render(session.follow(execution_id), as_json=as_json)
    except CloudOpsError as e:
        raise _fail(str(e)) from e
    raise typer.Exit(outcome.process_exit)


@cli.command()
def cancel(
    execution_id: str, remote: Annotated[str | None, typer.Option("--remote")] = None
) -> None:
    """Cancel a queued or running execution."""
    try:
        open_session(_settings(), remote).cancel(execution_id)
    except CloudOpsError as e:
        raise _fail(str(e)) from e
    sys.stderr.write(f"[cloudops] cancel requested for {execution_id}\n")


@cli.command("ls")
def list_executions(
    status: Annotated[str | None, typer.Option("--status")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    remote: Annotated[str | None, typer.Option("--remote")] = None,
) -> None:
    """List recent executions, newest first."""
    try:
        records = open_session(_settings(), remote).records(status, limit)
    except CloudOpsError as e:
        raise _fail(str(e)) from e
    for rec in records:
        if as_json:
            sys.stdout.write(json.dumps(rec) + "\n")
        else:
            sys.stdout.write(
                f"{rec['executionId']}  {rec['status']:<9}  {rec.get('queuedAt', ''):<27}  "
                f"{rec['command'][:60]}\n"
            )


@cli.command()
def worker(
    queues: Annotated[str | None, typer.Option("--queues", help="Q1,Q2")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency")] = None,
    hostname: Annotated[str | None, typer.Option("--hostname", help="as Celery's -n")] = None,
    loglevel: Annotated[str, typer.Option("--loglevel")] = "INFO",
) -> None:
    """Start a Celery worker that runs commands and playbook steps."""
    from celery.signals import worker_ready, worker_shutting_down

    from worker.app import configure
    from worker.reaper import start_reaper, stop_after_grace
    from worker.runtime import Runtime

    settings = _settings()
    if settings.redis_url is None:
        raise _fail("CLOUDOPS_REDIS_URL is not set: a worker needs Redis")
    app = configure(settings)
    # Mingle only syncs revoked ids between workers; our cancel mark in Redis does that job.
    argv = ["worker", "-E", "--loglevel", loglevel, "-P", "prefork", "--without-mingle"]
    argv += ["-Q", queues or settings.default_queue]
    if concurrency is not None:
        argv += ["-c", str(concurrency)]
    if hostname:
        argv += ["-n", hostname]

    reaper: dict[str, Any] = {}

    @worker_ready.connect(weak=False)  # type: ignore[untyped-decorator]
    def _start_reaper(sender: Any = None, **_: Any) -> None:
        # Its own Runtime: the reaper thread must share no lock with the pool's forks.
        reaper["hostname"] = getattr(sender, "hostname", None)
        reaper["runtime"] = Runtime.build(settings)
        start_reaper(reaper["runtime"], reaper["hostname"])

    @worker_shutting_down.connect(weak=False)  # type: ignore[untyped-decorator]
    def _bound_warm_shutdown(**_: Any) -> None:
        if "runtime" in reaper:
            stop_after_grace(reaper["runtime"], reaper["hostname"], settings.shutdown_grace_s)

    app.worker_main(argv)


@cli.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def flower(ctx: typer.Context) -> None:
    """Start Flower on this fleet's broker (extra arguments go to Flower, e.g. --port=5555)."""
    from worker.app import configure

    settings = _settings()
    if settings.effective_broker_url is None:
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
    import uvicorn

    from api.app import create_app  # type: ignore[import-not-found, unused-ignore]

    settings = _settings()
    if embedded or settings.redis_url is None:
        settings, dispatcher = _embedded_fleet(settings)
        if not settings.api_tokens:
            # A token for this run, in a file only this user can read (never in a log line).
            token = secrets.token_urlsafe(24)
            path = Path.home() / ".cloudops" / "embedded-token"
            path.parent.mkdir(mode=0o700, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(token + "\n")
            settings = settings.with_(api_tokens=(token,))
            sys.stderr.write(f"[cloudops] embedded relay: API token for this run in {path}\n")
    else:
        from worker.celery_dispatch import CeleryDispatcher

        dispatcher = CeleryDispatcher(settings)
    # Streams never end by themselves: a restart must not wait on them (clients resume).
    uvicorn.run(
        create_app(settings, dispatcher),
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=3,
    )


def _embedded_fleet(settings: Settings) -> tuple[Settings, Dispatcher]:
    """The whole product in this process: an in-process Redis (fakeredis, served on a loopback
    port so the relay's own clients work unchanged) and executions run in threads here."""
    from fakeredis import TcpFakeServer

    from worker.embedded import EmbeddedDispatcher, RedisBus
    from worker.runtime import Runtime

    server = TcpFakeServer(("127.0.0.1", 0), server_type="redis")
    threading.Thread(target=server.serve_forever, name="cloudops-fakeredis", daemon=True).start()
    url = f"redis://127.0.0.1:{server.server_address[1]}/0"
    settings = settings.with_(redis_url=url, broker_url=None)
    rt = Runtime.build(settings)
    return settings, EmbeddedDispatcher(settings, RedisBus(rt.publisher, rt.records))


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
    sys.exit(rc if isinstance(rc, int) else 0)
