"""The archiver: copies executions from Redis into the history database, exactly once.

Where it runs: in the relay process, as a background thread (`run_forever`); any number of
relays may run one, they share the work safely (see below). It needs only a sync Redis client,
the key prefix and an engine, so a worker or a `cloudops db archive` command can run it too.
Embedded mode can call `archive(execution_id)` when an execution ends.

Finding work, every pass (default every second): the `running` set, the executions queued
since the last pass (the `executions` index, from its high-water mark less a margin for clocks
and late writes; the whole index on the first pass and every `rescan_interval_s`), and the
rows of the database not finished with (`archive_done` false: queued, running, or ended with
events still to copy). For each, one pipelined `GET seq` + `HMGET status completeId` tells
whether Redis holds more than the database: an ended execution is archived at once, a running
one at most every `running_interval_s` (5 s: the contract asks for 10), so that a chatty
command makes a batch per 5 s rather than one per pass.

Exactly once: executions are archived in groups (two groups at a time on PostgreSQL, each on
its own thread and connection), one database transaction per group and step. The
transaction first locks each execution (PostgreSQL: an advisory transaction lock on its id,
all taken in one statement in one global order, so that two archivers never deadlock;
SQLite: BEGIN IMMEDIATE holds the file), then reads `archived_through` under that lock, then
reads Redis (XRANGE and HGETALL in one MULTI, so record and events are one snapshot), then
writes the batches, the hosts and the row with its new `archived_through`, and commits. A
second archiver waits on the lock and then starts after what the first committed, so batches
never overlap and their boundaries (events.db.batches.cut) are the same whoever writes them.
The primary key (execution_id, first_id) with ON CONFLICT DO NOTHING is the second line of
defence. Redis is only read, never written: there is nothing to undo after a crash.

Crash recovery: a killed archiver's transaction is rolled back by the database (PostgreSQL
when the connection drops, which also frees its advisory locks; SQLite's WAL on next open), so
the database holds whole steps only; the next pass of any archiver starts each execution
after its `archived_through`. The first pass after a start scans the whole index, so an
execution that ran entirely while no archiver was up is found as long as Redis holds it (the
history TTL, 7 days by default).

Cost per execution: one executions row and its index entries (1.4 KB measured at a million
rows, record JSON and trigram index included), one execution_hosts row per host, and one
event_batches row per 2000 events or 1 MiB of envelopes (newline-joined, zstd level 1 above
1 KiB: the benchmark's terminal output stored 11x smaller, 77 MB of envelopes in 7 MB). A
running execution adds a row update and a small batch per 5 s while it prints. Throughput
(tests/benchmarks/archive.py): about half a raw COPY of the same events, a row per event
(0.48x in a quiet run; 0.50x with zlib, which cost four times zstd's CPU): the reads of Redis
and the round trips set the pace, not compression.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from sqlalchemy import ColumnElement, Connection, Engine, Row, false, select, text

from events.db.batches import MAX_BATCH_BYTES, MAX_BATCH_EVENTS, cut
from events.db.engine import is_postgres, lock_for_transaction, upsert, write_connection
from events.db.rows import event_hosts, execution_values, record_hosts
from events.db.schema import event_batches, execution_hosts, executions
from events.db.snapshot import SnapshotReader
from events.keys import Keys

log = logging.getLogger(__name__)

_IN_CHUNK = 500  # ids per IN (...) query
_DONE = -1  # in _stored's answer: the row is done for good


@dataclass
class ArchiveStats:
    """What one pass (or one `archive` call) did."""

    due: int = 0
    executions: int = 0
    events: int = 0
    batches: int = 0
    raw_bytes: int = 0
    stored_bytes: int = 0
    errors: int = 0

    def add(self, other: ArchiveStats) -> None:
        for name in ("executions", "events", "batches", "raw_bytes", "stored_bytes", "errors"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


@dataclass(frozen=True)
class ArchiveOptions:
    """How the archiver paces and sizes its work. Field names carry their unit."""

    running_interval_s: float = 5.0
    rescan_interval_s: float = 600.0
    index_margin_s: float = 60.0
    # Unfinished rows not written for this long are given up on (Redis forgot them).
    horizon_s: float = 8 * 86400.0
    threads: int = 2
    group_executions: int = 50
    tx_bytes: int = 4 * 1024 * 1024
    page_events: int = 512
    batch_events: int = MAX_BATCH_EVENTS
    batch_bytes: int = MAX_BATCH_BYTES


class Archiver:
    def __init__(
        self,
        redis_client: redis.Redis,
        keys: Keys,
        engine: Engine,
        options: ArchiveOptions | None = None,
    ) -> None:
        self._redis = redis_client
        self._reader = SnapshotReader(redis_client, keys)
        self._keys = keys
        self._engine = engine
        self.options = options or ArchiveOptions()
        self._index_hwm_ms: float | None = None
        self._next_rescan = 0.0
        self._last_archived: dict[str, float] = {}

    # -- the loop ----------------------------------------------------------------------------
    def run_forever(self, stop_event: threading.Event, interval_s: float = 1.0) -> None:
        """Pass after pass until `stop_event` is set. A failing pass (database or Redis down)
        is logged and retried with a backoff up to 30 s; it never ends the loop."""
        backoff_s = interval_s
        while not stop_event.is_set():
            t0 = time.monotonic()
            try:
                self.run_once()
                backoff_s = interval_s
            except Exception:
                log.exception("archive pass failed; next try in %.0f s", backoff_s)
                stop_event.wait(backoff_s)
                backoff_s = min(30.0, backoff_s * 2)
                continue
            stop_event.wait(max(0.0, interval_s - (time.monotonic() - t0)))

    def run_once(self) -> ArchiveStats:
        """One pass: archive every execution that is due (ended ones first)."""
        due = self._due()
        stats = ArchiveStats(due=len(due))
        threads = 1 if self._engine.dialect.name == "sqlite" else self.options.threads
        size = max(1, min(self.options.group_executions, -(-len(due) // threads)))
        groups = [due[i : i + size] for i in range(0, len(due), size)]
        if len(groups) <= 1 or threads <= 1:
            for group in groups:
                stats.add(self.archive_many(group))
            return stats
        # Groups in parallel: each waits on Redis or the database (or zstd, which lets go of
        # the GIL) much of its time. SQLite has one writer at a time: no point there.
        with ThreadPoolExecutor(threads, thread_name_prefix="cloudops-archive") as pool:
            for s in pool.map(self.archive_many, groups):
                stats.add(s)
        return stats

    def archive(self, execution_id: str) -> ArchiveStats:
        """Store now whatever Redis holds of one execution that the database lacks."""
        return self.archive_many([execution_id])

    def archive_many(self, execution_ids: Sequence[str]) -> ArchiveStats:
        stats = ArchiveStats()
        todo = sorted(set(execution_ids))
        with write_connection(self._engine) as conn:
            while todo:
                try:
                    with conn.begin():
                        step, todo = self._step(conn, todo)
                except Exception:
                    if len(todo) == 1:
                        log.exception("archiving %s failed", todo[0])
                        stats.errors += 1
                        break
                    # One bad execution must not hold back the others: retry them one by one.
                    for execution_id in todo:
                        stats.add(self.archive_many([execution_id]))
                    break
                stats.add(step)
        return stats

    # -- one transaction ---------------------------------------------------------------------
    def _step(self, conn: Connection, ids: list[str]) -> tuple[ArchiveStats, list[str]]:
        """Archive what fits in one transaction; returns its stats and the ids not caught up."""
        # All the group's locks in one statement, in one global order (lock_for_transaction):
        # archivers with overlapping groups never deadlock.
        lock_for_transaction(conn, *("archive:" + ex for ex in ids))
        if is_postgres(conn):
            # The commit need not wait for its WAL flush: a database crash can only take the
            # last steps back whole (rows and archived_through together), and the next pass
            # copies them again from Redis, which keeps them for days.
            conn.execute(text("SET LOCAL synchronous_commit = off"))
        start = dict.fromkeys(ids, 0)
        stored: dict[str, tuple[Any, bool]] = {}
        c = executions.c
        for r in _execution_rows(conn, ids, c.archived_through, c.record, c.archive_done):
            start[r.execution_id] = r.archived_through
            stored[r.execution_id] = (r.record, r.archive_done)
        snaps = self._reader.read(
            start, tx_bytes=self.options.tx_bytes, page_events=self.options.page_events
        )
        now = datetime.now(UTC)
        stats = ArchiveStats()
        rows_ex: list[dict[str, Any]] = []
        rows_batch: list[dict[str, Any]] = []
        rows_host: list[dict[str, Any]] = []
        behind: list[str] = []
        for execution_id, snap in snaps.items():
            if not snap.raw.get("status"):
                continue  # no record in Redis (expired, flushed): nothing to store
            if not snap.caught_up:
                behind.append(execution_id)
            values = execution_values(
                execution_id,
                snap.raw,
                archived_through=snap.last,
                # Nothing is published after execution_complete, and the record was read with
                # the stream's end: once both are in, this execution is done for good.
                done=snap.caught_up and "completeId" in snap.raw,
                now=now,
            )
            if not snap.ids and stored.get(execution_id) == (
                values["record"],
                values["archive_done"],
            ):
                continue  # another archiver got here first: nothing new
            rows_ex.append(values)
            batches = cut(
                snap.ids,
                snap.envelopes,
                max_events=self.options.batch_events,
                max_bytes=self.options.batch_bytes,
            )
            for b in batches:
                rows_batch.append(
                    {
                        "execution_id": execution_id,
                        "first_id": b.first_id,
                        "last_id": b.last_id,
                        "codec": b.codec,
                        "data": b.data,
                        "raw_bytes": b.raw_bytes,
                    }
                )
                stats.batches += 1
                stats.raw_bytes += b.raw_bytes
                stats.stored_bytes += len(b.data)
            hosts = record_hosts(values["record"]) | event_hosts(snap.envelopes)
            rows_host += [{"execution_id": execution_id, "host": h} for h in sorted(hosts)]
            stats.executions += 1
            stats.events += len(snap.ids)
        self._write(conn, rows_ex, rows_batch, rows_host)
        return stats, behind

    def _write(
        self,
        conn: Connection,
        rows_ex: list[dict[str, Any]],
        rows_batch: list[dict[str, Any]],
        rows_host: list[dict[str, Any]],
    ) -> None:
        if rows_ex:
            ins = upsert(conn, executions)
            keep = {c: ins.excluded[c] for c in rows_ex[0] if c != "execution_id"}
            stmt = ins.on_conflict_do_update(index_elements=["execution_id"], set_=keep)
            conn.execute(stmt, rows_ex)
        # The rows go in after their executions row: the foreign keys need it.
        if rows_batch:
            stmt = upsert(conn, event_batches).on_conflict_do_nothing(
                index_elements=["execution_id", "first_id"]
            )
            conn.execute(stmt, rows_batch)
        if rows_host:
            stmt = upsert(conn, execution_hosts).on_conflict_do_nothing(
                index_elements=["execution_id", "host"]
            )
            conn.execute(stmt, rows_host)

    # -- what is due -------------------------------------------------------------------------
    def _due(self) -> list[str]:
        candidates = {_s(x) for x in self._redis.smembers(self._keys.running())}
        candidates |= self._index_ids()
        stored = self._stored(candidates)
        candidates |= stored.keys()
        ids = sorted(ex for ex in candidates if stored.get(ex) != _DONE)
        pipe = self._redis.pipeline(transaction=False)
        for ex in ids:
            pipe.get(self._keys.seq(ex))
            pipe.hmget(self._keys.record(ex), ["status", "completeId"])
        replies = pipe.execute()
        ended: list[str] = []
        running: list[str] = []
        now = time.monotonic()
        for i, ex in enumerate(ids):
            seq_raw, (status, complete) = replies[2 * i], replies[2 * i + 1]
            through = stored.get(ex)  # None: no row yet
            if status is None:
                continue  # not (or no longer) in Redis
            if complete is not None:
                ended.append(ex)
            elif through is None:
                running.append(ex)  # a first row for a queued or running execution
            elif (
                int(seq_raw or 0) > through
                and now - self._last_archived.get(ex, 0.0) >= self.options.running_interval_s
            ):
                running.append(ex)
        # Forget executions that ended or left Redis, so that this map stays small.
        self._last_archived = {ex: t for ex, t in self._last_archived.items() if ex in candidates}
        for ex in running:
            self._last_archived[ex] = now
        for ex in ended:
            self._last_archived.pop(ex, None)
        return ended + running

    def _index_ids(self) -> set[str]:
        """Executions queued since the last pass (the whole index when a rescan is due)."""
        now = time.monotonic()
        low: str | float = "-inf"
        if self._index_hwm_ms is not None and now < self._next_rescan:
            low = self._index_hwm_ms - self.options.index_margin_s * 1000
        else:
            self._next_rescan = now + self.options.rescan_interval_s
        found: set[str] = set()
        offset, page = 0, 10_000
        while True:
            members: Any = self._redis.zrangebyscore(
                self._keys.index(), low, "+inf", start=offset, num=page, withscores=True
            )
            for member, score in members:
                found.add(_s(member))
                if self._index_hwm_ms is None or score > self._index_hwm_ms:
                    self._index_hwm_ms = score
            if len(members) < page:
                return found
            offset += page

    def _stored(self, candidates: Iterable[str]) -> dict[str, int]:
        """What the database knows of these executions and of every unfinished one:
        id -> archived_through, or _DONE for an execution done for good."""
        out: dict[str, int] = {}
        cutoff = datetime.now(UTC) - timedelta(seconds=self.options.horizon_s)
        with self._engine.connect() as conn:
            open_rows = conn.execute(
                select(executions.c.execution_id, executions.c.archived_through).where(
                    executions.c.archive_done == false(), executions.c.archived_at > cutoff
                )
            )
            out.update({r.execution_id: r.archived_through for r in open_rows})
            rest = sorted(set(candidates) - out.keys())
            c = executions.c
            for r in _execution_rows(conn, rest, c.archived_through, c.archive_done):
                out[r.execution_id] = _DONE if r.archive_done else r.archived_through
        return out


def _execution_rows(
    conn: Connection, ids: Sequence[str], *columns: ColumnElement[Any]
) -> Iterator[Row[Any]]:
    """The rows of `executions` with these ids (execution_id and `columns`), _IN_CHUNK ids a
    query."""
    for i in range(0, len(ids), _IN_CHUNK):
        chunk = ids[i : i + _IN_CHUNK]
        yield from conn.execute(
            select(executions.c.execution_id, *columns).where(executions.c.execution_id.in_(chunk))
        )
