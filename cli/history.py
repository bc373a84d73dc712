"""The history database in the composition root: which database a process uses, the schema
check of relays and workers, the archiving beside a relay and after an embedded run, and the
CLI's own reads (`ls`, `tail` of an execution Redis forgot).

- `CLOUDOPS_DATABASE_URL` set: that database (PostgreSQL for a fleet). Its schema is migrated
  by `cloudops db upgrade` only; relays and workers refuse to start on one that is behind.
- embedded mode without it: the SQLite file at `$XDG_DATA_HOME/cloudops/history.db`, created
  or upgraded by itself.
- a fleet without it: no database; history lives in Redis only (the relay says so once).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from events.db import migrate
from events.db.archive import Archiver
from events.db.engine import make_engine
from events.db.errors import DatabaseUnavailableError
from events.db.query import History
from events.db.search import LIVE_WINDOW_S, SearchFilter, cursor_key, merge_page, page_of
from events.db.service import HistoryService
from events.keys import Keys
from events.records import as_str
from events.settings import Settings
from events.wire import RawEvent
from worker.runtime import Runtime

log = logging.getLogger(__name__)

T = TypeVar("T")

NO_DATABASE_WARNING = (
    "CLOUDOPS_DATABASE_URL is not set: execution history lives only in Redis, for"
    " CLOUDOPS_HISTORY_TTL_S, and is lost with it"
)


def _where(settings: Settings) -> str:
    return settings.database_url_masked or str(migrate.default_sqlite_path())


def guarded(settings: Settings, call: Callable[[], T]) -> T:
    """`call()`, a database that does not answer turned into one DatabaseUnavailableError."""
    try:
        return call()
    except SQLAlchemyError as e:
        why = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise DatabaseUnavailableError(_where(settings), why) from e


def history_engine(settings: Settings) -> Engine | None:
    """This process's history database (see the module docstring); None: there is none."""
    if settings.database_url:
        return make_engine(settings.database_url)
    if settings.embedded:
        url = guarded(settings, migrate.ensure_sqlite)
        return make_engine(url)
    return None


def check_schema(settings: Settings) -> None:
    """For relays and workers: SchemaBehindError (naming `cloudops db upgrade`) unless the
    configured database is at this code's revision. Embedded SQLite upgrades itself instead."""
    if settings.database_url:
        url = settings.database_url
        guarded(settings, lambda: migrate.check_schema(url))


def upgrade(settings: Settings) -> str:
    """`cloudops db upgrade`: migrate the configured database (or the embedded SQLite file);
    returns where, password masked."""
    if settings.database_url:
        url = settings.database_url
        guarded(settings, lambda: migrate.upgrade(url))
    else:
        guarded(settings, migrate.ensure_sqlite)
    return _where(settings)


def prune(settings: Settings) -> int:
    """`cloudops db prune`: retention applied now; how many executions were deleted."""
    from events.db.retention import prune as prune_db

    engine = history_engine(settings)
    assert engine is not None, "a fleet without CLOUDOPS_DATABASE_URL has nothing to prune"
    try:
        if settings.database_url:
            guarded(settings, lambda: migrate.check_schema(engine))
        return guarded(
            settings,
            lambda: prune_db(engine, settings.retention_days, settings.retention_min_keep),
        )
    finally:
        engine.dispose()


def relay_service(runtime: Runtime, engine: Engine | None) -> HistoryService | None:
    """The archiver and the daily prune beside a relay; None (and the warning) without a
    database."""
    if engine is None:
        log.warning(NO_DATABASE_WARNING)
        return None
    s = runtime.settings
    return HistoryService(
        runtime.redis,
        runtime.keys,
        engine,
        retention_days=s.retention_days,
        retention_min_keep=s.retention_min_keep,
    )


def archive_now(runtime: Runtime, engine: Engine, execution_id: str) -> None:
    """Embedded mode, at the end of a run: the execution into the SQLite history, now (its
    in-process Redis dies with this process)."""
    stats = Archiver(runtime.redis, runtime.keys, engine).archive(execution_id)
    if stats.errors:
        log.warning("execution %s could not be archived", execution_id)


def stored_events(history: History, execution_id: str, after: int) -> Iterator[RawEvent] | None:
    """An archived execution's events after `after` (`cloudops tail` once Redis forgot it)."""
    if history.get_state(execution_id) is None:
        return None
    return (RawEvent.from_json(e) for e in history.iter_events(execution_id, after))


def search(
    runtime: Runtime,
    history: History | None,
    filt: SearchFilter,
    limit: int,
    cursor: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """`cloudops ls` without a relay: the same page the relay's list serves (api.store)."""
    below = cursor_key(cursor)
    if history is None:
        return _search_redis(runtime, filt, limit, below)
    stored, stored_next = history.search(limit=limit, cursor=cursor, **filt.sql_args())
    ids = [str(w["executionId"]) for w in stored]
    ids += runtime.records.running_ids()
    ids += _recent_ids(runtime.redis, runtime.keys, LIVE_WINDOW_S)
    live: dict[str, dict[str, Any]] = {}
    for ex in dict.fromkeys(ids):
        rec = runtime.records.get(ex)
        if rec is not None:
            live[ex] = rec.wire()
    return merge_page(stored, stored_next, live, filt, limit, below)


def _recent_ids(client: Any, keys: Keys, window_s: float) -> list[str]:
    low = time.time() * 1000 - window_s * 1000
    return [as_str(x) for x in client.zrangebyscore(keys.index(), low, "+inf")]


def _search_redis(
    runtime: Runtime, filt: SearchFilter, limit: int, below: Any
) -> tuple[list[dict[str, Any]], str | None]:
    # Every record Redis holds, newest first: a CLI's list is small and rare.
    records = [r.wire() for r in runtime.records.recent(limit=1_000_000)]
    return page_of(records, filt, limit, below)
