"""Reading the history database back: a record, its events, and the executions list (search).

What comes out is what the relay serves from Redis: the record's wire JSON as it was stored,
and each event's envelope bytes exactly as they were in the Redis stream, so a route can serve
an execution from here, once Redis forgot it, with nothing changed.

Search is newest first, by (queued_at, execution_id) descending, with keyset pagination: the
cursor is the last row's (queued_at, execution_id), so a page costs an index range whatever its
depth, and rows inserted meanwhile never shift a page (no duplicate, no gap).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Select, exists, select, tuple_

from events.db.batches import unpack
from events.db.rows import parse_time
from events.db.schema import event_batches, execution_hosts, executions
from events.errors import InvalidRequestError
from events.records import ExecutionRecord

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
# Batches fetched per query while reading events (each up to ~1 MiB of envelopes).
_BATCHES_PER_QUERY = 8


@dataclass(frozen=True)
class StoredState:
    """Where an execution stands in the database: what a stream needs before it starts."""

    status: str
    complete_id: int | None
    archived_through: int


def encode_cursor(queued_at: datetime, execution_id: str) -> str:
    raw = json.dumps([queued_at.isoformat(), execution_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (queued_at, execution_id) a cursor stands for; InvalidRequestError otherwise."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, execution_id = json.loads(raw)
        when = parse_time(at)
        if when is None or not isinstance(execution_id, str):
            raise ValueError(cursor)
    except (ValueError, TypeError) as e:
        raise InvalidRequestError("cursor", "not a cursor this server returned") from e
    return when, execution_id


def _wire(stored: Any) -> dict[str, Any]:
    """A stored record as the relay serves it: its fields in the model's order (PostgreSQL's
    JSONB keeps its own key order), so the bytes equal what was served from Redis."""
    return ExecutionRecord.model_validate(stored).wire()


def _like_pattern(q: str) -> str:
    """`q` as a LIKE substring pattern (lower-cased like search_text), wildcards escaped."""
    escaped = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _has_trigram(q: str) -> bool:
    """Whether pg_trgm can extract a trigram from `q`: it splits on what is not a letter or a
    digit, and needs a word of 3 characters."""
    run = 0
    for ch in q:
        run = run + 1 if ch.isalnum() else 0
        if run >= 3:
            return True
    return False


def _time(value: datetime | str | None, name: str) -> datetime | None:
    if value is None or isinstance(value, datetime):
        if value is not None and value.tzinfo is None:
            raise InvalidRequestError(name, "needs a time zone (RFC 3339)")
        return value
    parsed = parse_time(value)
    if parsed is None or "T" not in value.upper():
        raise InvalidRequestError(name, f"not an RFC 3339 timestamp: {value!r}")
    return parsed


class History:
    """Reads of the history database; thread-safe (a connection from the pool per call)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def get_record(self, execution_id: str) -> dict[str, Any] | None:
        """The record's wire JSON (camelCase), as the relay served it from Redis; None if the
        database has no such execution."""
        with self._engine.connect() as conn:
            rec = conn.execute(
                select(executions.c.record).where(executions.c.execution_id == execution_id)
            ).scalar_one_or_none()
        return None if rec is None else _wire(rec)

    def get_spec(self, execution_id: str) -> dict[str, Any] | None:
        """What the worker ran (the command, or the rendered playbook), for a rerun; None if
        there is no such execution or it has no spec."""
        with self._engine.connect() as conn:
            spec = conn.execute(
                select(executions.c.spec).where(executions.c.execution_id == execution_id)
            ).scalar_one_or_none()
        return dict(spec) if isinstance(spec, dict) else None

    def get_state(self, execution_id: str) -> StoredState | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(
                    executions.c.status, executions.c.complete_id, executions.c.archived_through
                ).where(executions.c.execution_id == execution_id)
            ).first()
        return None if row is None else StoredState(row[0], row[1], row[2])

    def read_events(
        self, execution_id: str, after: int = 0, limit: int | None = None
    ) -> list[bytes]:
        """Envelopes with id > after, oldest first, at most `limit`: the bytes stored."""
        return list(self.iter_events(execution_id, after, limit))

    def iter_events(
        self, execution_id: str, after: int = 0, limit: int | None = None
    ) -> Iterator[bytes]:
        left = limit
        cursor = after
        while left is None or left > 0:
            with self._engine.connect() as conn:
                rows = conn.execute(
                    select(
                        event_batches.c.first_id,
                        event_batches.c.last_id,
                        event_batches.c.codec,
                        event_batches.c.data,
                    )
                    .where(
                        event_batches.c.execution_id == execution_id,
                        event_batches.c.last_id > cursor,
                    )
                    .order_by(event_batches.c.first_id)
                    .limit(_BATCHES_PER_QUERY)
                ).all()
            for first_id, last_id, codec, data in rows:
                lines = unpack(execution_id, first_id, last_id, codec, data)
                skip = max(0, cursor - first_id + 1)
                for envelope in lines[skip:]:
                    if left is not None:
                        if left <= 0:
                            return
                        left -= 1
                    yield envelope
                cursor = last_id
            if len(rows) < _BATCHES_PER_QUERY:
                return

    def search(
        self,
        *,
        status: str | None = None,
        command_type: str | None = None,
        q: str | None = None,
        host: str | None = None,
        submitted_by: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Records matching every filter given, newest first, and the cursor of the next page
        (None on the last). `q`: case-insensitive substring of the command or playbook name;
        `since <= queuedAt < until`; running and queued executions included."""
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidRequestError("limit", f"must be between 1 and {MAX_LIMIT}")
        stmt = self._filtered(
            status,
            command_type,
            q,
            host,
            submitted_by,
            _time(since, "since"),
            _time(until, "until"),
        )
        if cursor:
            at, execution_id = decode_cursor(cursor)
            key = tuple_(executions.c.queued_at, executions.c.execution_id)
            stmt = stmt.where(key < tuple_(at, execution_id))
        stmt = stmt.order_by(executions.c.queued_at.desc(), executions.c.execution_id.desc()).limit(
            limit + 1
        )
        with self._engine.connect() as conn:
            rows = conn.execute(stmt).all()
        more = len(rows) > limit
        rows = rows[:limit]
        records = [_wire(r.record) for r in rows]
        next_cursor = encode_cursor(rows[-1].queued_at, rows[-1].execution_id) if more else None
        return records, next_cursor

    def _filtered(
        self,
        status: str | None,
        command_type: str | None,
        q: str | None,
        host: str | None,
        submitted_by: str | None,
        since: datetime | None,
        until: datetime | None,
    ) -> Select[Any]:
        ex = executions.c
        stmt = select(ex.record, ex.queued_at, ex.execution_id)
        if status:
            stmt = stmt.where(ex.status == status)
        if command_type:
            stmt = stmt.where(ex.command_type == command_type)
        if submitted_by:
            stmt = stmt.where(ex.submitted_by == submitted_by)
        if q:
            # On PostgreSQL the trigram index answers LIKE '%...%' (pg_trgm); search_text is
            # stored lower-cased, so plain LIKE is the case-insensitive match on both dialects.
            text_col: Any = ex.search_text
            if not _has_trigram(q):
                # No trigram to look up: pg_trgm would read its whole index (seconds at a
                # million rows). Hidden from the index, the planner scans the table instead,
                # or the newest-first index until the page is full.
                text_col = text_col.concat("")
            stmt = stmt.where(text_col.like(_like_pattern(q), escape="\\"))
        if host:
            h = execution_hosts.c
            stmt = stmt.where(exists().where(h.execution_id == ex.execution_id, h.host == host))
        if since is not None:
            stmt = stmt.where(ex.queued_at >= since)
        if until is not None:
            stmt = stmt.where(ex.queued_at < until)
        return stmt
