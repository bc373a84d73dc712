"""How the CLI reaches executions: this process's own dispatcher (a fleet's Redis and broker,
or embedded mode's in-process ones), or a relay over HTTP (`--remote`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from api.dispatch import start_saved
from cli.client import RelayClient
from cli.history import archive_now, search, stored_events
from cli.wiring import Local, local
from events.db.audit import parse_since
from events.db.errors import needs_database
from events.db.playbooks import PlaybookStore
from events.db.schedules import ScheduleStore
from events.db.search import SearchFilter
from events.db.tokens import TokenStore
from events.errors import InvalidRequestError, Problem, ProblemsError, UnknownExecutionError
from events.hosts import HostRegistry
from events.models import ExecutionOptions
from events.requests import REQUEST_SOURCE, Params
from events.rerun import RerunHosts, RerunSource
from events.settings import Settings
from events.subscriber import Follower
from events.vocabulary import CommandType, Role
from events.wire import RawEvent
from worker.embedded import ThreadQueue

# How long an embedded `cloudops run` waits, once its execution ended, for the first attempt at
# each webhook (a receiver that answers at once is told; a hung one does not hold the CLI).
EMBEDDED_NOTIFY_WAIT_S = 2.0


class Session(Protocol):
    def submit(self, body: dict[str, Any]) -> str: ...
    def follow(self, execution_id: str, after: int = 0) -> Iterator[RawEvent]: ...
    def cancel(self, execution_id: str) -> None: ...
    def rerun(self, execution_id: str, hosts: RerunHosts, params: Params = None) -> str: ...
    def records(
        self, filt: SearchFilter, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]: ...
    def ended(self, execution_id: str) -> None: ...
    def workers(self) -> list[dict[str, Any]]: ...
    def save_playbook(self, name: str, text: str) -> tuple[dict[str, Any], bool]: ...
    def playbooks(self) -> list[dict[str, Any]]: ...
    def playbook(self, name: str, version: int | None = None) -> dict[str, Any]: ...
    def add_schedule(self, body: dict[str, Any]) -> dict[str, Any]: ...
    def schedules(self) -> list[dict[str, Any]]: ...
    def delete_schedule(self, schedule_id: str) -> None: ...
    def create_token(self, body: dict[str, Any]) -> dict[str, Any]: ...
    def tokens(self) -> list[dict[str, Any]]: ...
    def revoke_token(self, name: str) -> None: ...
    def audit(
        self, filters: dict[str, str], limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]: ...


def _options_from_body(body: dict[str, Any]) -> ExecutionOptions:
    try:
        return ExecutionOptions.model_validate(body.get("options") or {})
    except ValueError as e:
        raise InvalidRequestError("options", str(e).splitlines()[0]) from e


class LocalSession:
    """Submit through this process's dispatcher and read its Redis directly."""

    def __init__(self, settings: Settings) -> None:
        self.local: Local = local(settings)

    @property
    def _store(self) -> PlaybookStore:
        return needs_database(self.local.playbooks)

    def submit(self, body: dict[str, Any]) -> str:
        dispatcher = self.local.dispatcher
        if self.local.presence is not None:
            # Embedded: its one worker is listed, for a step whose targets name it.
            self.local.presence.beat()
        if body.get("playbookName") is not None:
            return start_saved(
                dispatcher,
                self._store,
                body["playbookName"],
                body.get("params"),
                version=body.get("version"),
            )
        if body.get("commandType") == CommandType.PLAYBOOK:
            return dispatcher.submit_playbook(
                body["playbook"], body.get("params"), source=body.get("source", REQUEST_SOURCE)
            )
        return dispatcher.submit_command(
            body["command"], body["commandType"], options=_options_from_body(body)
        )

    def follow(self, execution_id: str, after: int = 0) -> Iterator[RawEvent]:
        rt = self.local.runtime
        if rt.records.get(execution_id) is None:
            # Redis forgot it (or, embedded, it ran in an earlier process): the database.
            history = self.local.history
            stored = None if history is None else stored_events(history, execution_id, after)
            if stored is None:
                raise UnknownExecutionError(execution_id)
            return stored
        return iter(Follower(rt.redis, rt.keys, execution_id, after))

    def cancel(self, execution_id: str) -> None:
        self.local.dispatcher.cancel(execution_id)

    def rerun(self, execution_id: str, hosts: RerunHosts, params: Params = None) -> str:
        """From this Redis's record, else the database's (embedded: an earlier process's);
        `params`: its secret params, given again."""
        records, history = self.local.runtime.records, self.local.history
        record = records.get(execution_id)
        if record is not None:
            source = RerunSource(execution_id, record.wire(), records.spec(execution_id))
        elif history is not None and (wire := history.get_record(execution_id)) is not None:
            source = RerunSource(execution_id, wire, history.get_spec(execution_id))
        else:
            raise UnknownExecutionError(execution_id)
        return self.local.dispatcher.rerun(source, hosts, params)

    def records(
        self, filt: SearchFilter, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        return search(self.local.runtime, self.local.history, filt, limit, cursor)

    def ended(self, execution_id: str) -> None:
        """Embedded: into the SQLite history before this process and its Redis go, and its
        webhooks given a moment for a first attempt (never the ten minutes of retries)."""
        if self.local.embedded and self.local.engine is not None:
            archive_now(self.local.runtime, self.local.engine, execution_id)
        tasks = self.local.dispatcher.tasks
        if isinstance(tasks, ThreadQueue):
            tasks.wait_notified(execution_id, EMBEDDED_NOTIFY_WAIT_S)

    def workers(self) -> list[dict[str, Any]]:
        """The host registry in this process's Redis; embedded, its one in-process worker."""
        if self.local.presence is not None:
            self.local.presence.beat()
        rt = self.local.runtime
        return HostRegistry(rt.keys).read(rt.redis)

    def save_playbook(self, name: str, text: str) -> tuple[dict[str, Any], bool]:
        saved = self._store.save(name, text)
        return saved.playbook.wire(), saved.created

    def playbooks(self) -> list[dict[str, Any]]:
        return self._store.summaries()

    def playbook(self, name: str, version: int | None = None) -> dict[str, Any]:
        return self._store.get(name, version).wire()

    @property
    def _schedules(self) -> ScheduleStore:
        return needs_database(self.local.schedules)

    def add_schedule(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._schedules.create(body).wire()

    def schedules(self) -> list[dict[str, Any]]:
        return [s.wire() for s in self._schedules.all()]

    def delete_schedule(self, schedule_id: str) -> None:
        self._schedules.delete(schedule_id)

    # Tokens straight in the database: whoever holds its URL is its admin already.
    @property
    def _tokens(self) -> TokenStore:
        return needs_database(self.local.tokens, "API tokens")

    def create_token(self, body: dict[str, Any]) -> dict[str, Any]:
        token, secret = self._tokens.create(
            body["name"], Role(body["role"]), body.get("queues"), body.get("expiresInS")
        )
        return {**token.wire(), "secret": secret}

    def tokens(self) -> list[dict[str, Any]]:
        return [t.wire() for t in self._tokens.list()]

    def revoke_token(self, name: str) -> None:
        self._tokens.revoke(name)

    def audit(
        self, filters: dict[str, str], limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        log = needs_database(self.local.audit, "the audit log")
        since = parse_since(filters.get("since"))
        actor, action = filters.get("actor"), filters.get("action")
        return log.page(actor=actor, action=action, since=since, limit=limit, cursor=cursor)


class RemoteSession(RelayClient):
    """Through the relay: RelayClient's calls, and what the CLI adds to a few of them."""

    def submit(self, body: Mapping[str, Any]) -> str:
        source = body.get("source")
        try:
            return super().submit({k: v for k, v in body.items() if k != "source"})
        except ProblemsError as e:
            if not source:
                raise
            # The relay names a playbook from a body `<request>`; this one came from a file.
            named = [Problem(p.loc, _named(p.msg, source)) for p in e.problems]
            raise ProblemsError(named, field=e.field) from None

    def records(
        self, filt: SearchFilter, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        return self.search(filt.query(), limit, cursor)

    def ended(self, execution_id: str) -> None:
        """The relay archives (or keeps Redis only): nothing to do here."""

    def save_playbook(self, name: str, text: str) -> tuple[dict[str, Any], bool]:
        return self.put_playbook(name, text)


def _named(msg: str, source: str) -> str:
    return source + msg.removeprefix(REQUEST_SOURCE) if msg.startswith(REQUEST_SOURCE) else msg


def open_session(settings: Settings, remote: str | None) -> Session:
    """Remote with `--remote URL` or CLOUDOPS_API_URL; else this process's own (fleet with
    CLOUDOPS_REDIS_URL, embedded without)."""
    url = remote or settings.api_url
    if url:
        return RemoteSession(url, settings.api_token)
    return LocalSession(settings)
