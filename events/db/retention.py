"""Retention: delete executions older than `retention_days`, always keeping the newest
`min_keep` whatever their age (CONTRACT §8), with their event batches and hosts.

Runs in chunks of `chunk` executions, one transaction each, so that a prune of a year of
history never holds one huge transaction (nor SQLite's write lock) for long. Each chunk finds
its rows afresh under its own transaction: the newest `min_keep` are re-counted every time, so
executions archived meanwhile, or a second pruner, can never make it delete one too many. On
PostgreSQL a session advisory lock lets one pruner run at a time (a second returns 0 at once);
SQLite serialises writers on the file anyway.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, delete, select, tuple_

from events.db.engine import try_lock_session, unlock_session, write_connection
from events.db.schema import event_batches, execution_hosts, executions

log = logging.getLogger(__name__)

_LOCK = "retention-prune"


def prune(
    engine: Engine,
    retention_days: int = 90,
    min_keep: int = 1000,
    now: datetime | None = None,
    *,
    chunk: int = 2000,
) -> int:
    """Delete what retention allows; returns how many executions were deleted (0 when another
    pruner holds the lock)."""
    if retention_days < 0 or min_keep < 0:
        raise ValueError("retention_days and min_keep must not be negative")
    cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    deleted = 0
    with write_connection(engine) as conn:
        if not try_lock_session(conn, _LOCK):
            log.info("another prune is running; this one does nothing")
            return 0
        try:
            while True:
                with conn.begin():
                    n = _prune_chunk(conn, cutoff, min_keep, chunk)
                deleted += n
                if n < chunk:
                    break
        finally:
            unlock_session(conn, _LOCK)
    if deleted:
        log.info("pruned %d executions queued before %s", deleted, cutoff.isoformat())
    return deleted


def _prune_chunk(conn: Connection, cutoff: datetime, min_keep: int, chunk: int) -> int:
    ex = executions.c
    newest_first = (ex.queued_at.desc(), ex.execution_id.desc())
    old = select(ex.execution_id).where(ex.queued_at < cutoff)
    if min_keep > 0:
        # The min_keep-th newest execution: it and everything newer stays.
        boundary = conn.execute(
            select(ex.queued_at, ex.execution_id)
            .order_by(*newest_first)
            .offset(min_keep - 1)
            .limit(1)
        ).first()
        if boundary is None:
            return 0  # min_keep executions or fewer in all
        old = old.where(tuple_(ex.queued_at, ex.execution_id) < tuple_(boundary[0], boundary[1]))
    ids = list(conn.execute(old.order_by(ex.queued_at, ex.execution_id).limit(chunk)).scalars())
    if not ids:
        return 0
    # Children first: SQLite enforces the foreign keys but its cascade would cost the same.
    conn.execute(delete(event_batches).where(event_batches.c.execution_id.in_(ids)))
    conn.execute(delete(execution_hosts).where(execution_hosts.c.execution_id.in_(ids)))
    conn.execute(delete(executions).where(ex.execution_id.in_(ids)))
    return len(ids)
