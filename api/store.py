"""Async reads of what the workers wrote: records, history, counters (key layout of `events`).

Redis is a cache of the history database when one is configured (CONTRACT §8): a record, a
stream's state and a history page whose Redis keys are gone are read from the database
(`events.db.query.History`, whose envelopes are the bytes Redis held), so every route serves an
archived execution exactly as before. While Redis holds the record, Redis alone answers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis

from api.hub import RelayEvent
from events.db.query import History
from events.db.search import LIVE_WINDOW_S, Key, SearchFilter, merge_page, page_of, record_key
from events.hosts import HostRegistry
from events.keys import Keys
from events.notifications import Attempt, decode_attempts
from events.records import ExecutionRecord, as_str, decode_hash, record_from_hash
from events.rerun import RerunSource
from events.vocabulary import RecordField, Status
from events.wire import RawEvent

T = TypeVar("T")


F = RecordField


def checkpoint() -> None:
    """Re-raise a cancellation that a Redis call swallowed.

    redis-py sends every command through `asyncio.wait_for` when a socket timeout is set, and
    Python 3.11's wait_for returns the result and drops a cancellation that arrives as the
    command completes (cpython gh-86296, fixed in 3.12). A stream whose client left would then
    never end. Call this after every Redis await of a cancellable task.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _done(call: Awaitable[T]) -> T:
    """Await one Redis call, then `checkpoint()`."""
    result = await call
    checkpoint()
    return result


@dataclass(frozen=True)
class StreamState:
    """What a stream needs to know before it starts: the record exists, and where it ends."""

    status: Status
    complete_id: int | None


class Store:
    def __init__(self, client: aioredis.Redis, keys: Keys, history: History | None = None) -> None:
        self.redis = client
        self.keys = keys
        self.history = history
        self.registry = HostRegistry(keys)

    async def _db(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A call of the (sync) History on a thread, then `checkpoint()`."""
        result = await asyncio.to_thread(fn, *args, **kwargs)
        checkpoint()
        return result

    async def ping(self) -> bool:
        return bool(await _done(self.redis.ping()))

    # -- records ---------------------------------------------------------------------------
    async def record(self, execution_id: str) -> ExecutionRecord | None:
        raw = decode_hash(await _done(self.redis.hgetall(self.keys.record(execution_id))))
        if raw.get(F.STATUS):
            return record_from_hash(raw)
        if self.history is None:
            return None
        wire = await self._db(self.history.get_record, execution_id)
        return None if wire is None else ExecutionRecord.model_validate(wire)

    async def rerun_source(self, execution_id: str) -> RerunSource | None:
        """The record and the stored spec a rerun starts from, from Redis or, once it forgot
        the execution, the database; None if neither has it."""
        raw = decode_hash(await _done(self.redis.hgetall(self.keys.record(execution_id))))
        if raw.get(F.STATUS):
            spec = json.loads(raw[F.SPEC]) if raw.get(F.SPEC) else None
            return RerunSource(execution_id, record_from_hash(raw).wire(), spec)
        if self.history is None:
            return None
        wire = await self._db(self.history.get_record, execution_id)
        if wire is None:
            return None
        return RerunSource(execution_id, wire, await self._db(self.history.get_spec, execution_id))

    async def notifications(self, execution_id: str) -> list[Attempt]:
        """The delivery attempts of the execution's webhook notifications, oldest first (kept
        in Redis only: none once its keys expired)."""
        key = self.keys.notifications(execution_id)
        return decode_attempts(await _done(self.redis.lrange(key, 0, -1)))

    async def search(
        self, filt: SearchFilter, limit: int, below: Key | None, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the executions list, newest first, and the next cursor (events.db.search):
        the database's page merged with Redis's live records, or Redis alone without one."""
        if self.history is None:
            return await self._search_redis(filt, limit, below)
        stored, stored_next = await self._db(
            self.history.search, limit=limit, cursor=cursor, **filt.sql_args()
        )
        live = await self._live([str(w["executionId"]) for w in stored], below, LIVE_WINDOW_S)
        return merge_page(stored, stored_next, live, filt, limit, below)

    async def _live(
        self, ids: list[str], below: Key | None, window_s: float
    ) -> dict[str, dict[str, Any]]:
        """Redis's records of `ids`, of the running executions and of those queued within
        `window_s`: what the database may hold stale or not yet."""
        now_ms = time.time() * 1000
        recent: list[Any] = await _done(
            self.redis.zrangebyscore(self.keys.index(), now_ms - window_s * 1000, "+inf")
        )
        running: Any = await _done(self.redis.smembers(self.keys.running()))
        wanted = dict.fromkeys([*ids, *map(as_str, recent), *map(as_str, running)])
        out: dict[str, dict[str, Any]] = {}
        for wire in await self._records(list(wanted)):
            if below is None or record_key(wire) < below:
                out[str(wire["executionId"])] = wire
        return out

    async def _records(self, ids: list[str]) -> list[dict[str, Any]]:
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for ex in ids:
            pipe.hgetall(self.keys.record(ex))
        hashes = [decode_hash(h) for h in await _done(pipe.execute())]
        return [record_from_hash(raw).wire() for raw in hashes if raw.get(F.STATUS)]

    async def _search_redis(
        self, filt: SearchFilter, limit: int, below: Key | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Walk the index newest first from the cursor until a page and one more match."""
        # The index's score is the submit time in ms, a little after the record's queuedAt:
        # a minute of slack above the cursor, the exact key is compared after.
        top: float | str = "+inf" if below is None else below[0].timestamp() * 1000 + 60_000
        hits: list[dict[str, Any]] = []
        offset, page = 0, max(limit + 1, 200)
        while True:
            ids: list[Any] = await _done(
                self.redis.zrevrangebyscore(self.keys.index(), top, "-inf", start=offset, num=page)
            )
            hits += [
                w
                for w in await self._records([as_str(x) for x in ids])
                if filt.matches(w) and (below is None or record_key(w) < below)
            ]
            if len(ids) < page or len(hits) > limit:
                return page_of(hits, filt, limit, below)
            offset += page

    async def stream_state(self, execution_id: str) -> StreamState | None:
        status, complete_id = await _done(
            self.redis.hmget(self.keys.record(execution_id), [F.STATUS, F.COMPLETE_ID])
        )
        if status is not None:
            return StreamState(
                Status(as_str(status)), None if complete_id is None else int(complete_id)
            )
        if self.history is None:
            return None
        stored = await self._db(self.history.get_state, execution_id)
        return None if stored is None else StreamState(Status(stored.status), stored.complete_id)

    async def status_counts(self, limit: int) -> dict[str, int]:
        """Statuses of the `limit` most recent executions."""
        ids: list[Any] = await _done(self.redis.zrevrange(self.keys.index(), 0, limit - 1))
        pipe = self.redis.pipeline(transaction=False)
        for ex in ids:
            pipe.hget(self.keys.record(as_str(ex)), F.STATUS)
        counts: dict[str, int] = {}
        for status in await _done(pipe.execute()) if ids else []:
            if status is not None:
                counts[as_str(status)] = counts.get(as_str(status), 0) + 1
        return counts

    async def hashes(self, keys: list[str]) -> list[dict[bytes, bytes]]:
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        result: list[dict[bytes, bytes]] = await _done(pipe.execute())
        return result

    async def hosts(self) -> list[dict[str, Any]]:
        """The host registry (events.hosts), in the wire form."""
        return await self.registry.aread(self.redis)

    async def running_count(self) -> int:
        return int(await _done(self.redis.scard(self.keys.running())))

    async def stat(self, name: str) -> int:
        v = await _done(self.redis.get(self.keys.stat(name)))
        return 0 if v is None else int(v)

    async def incr_stat(self, name: str, by: int = 1) -> None:
        await _done(self.redis.incrby(self.keys.stat(name), by))

    # -- history ---------------------------------------------------------------------------
    async def history_page(
        self, execution_id: str, after: int, count: int, *, upto: int | None = None
    ) -> list[RawEvent]:
        """Events with after < id (<= upto), oldest first, at most `count`."""
        stream = self.keys.history(execution_id)
        low, high = f"{after + 1}-0", "+" if upto is None else f"{upto}-0"
        entries: Any
        if self.history is None:
            entries = await _done(self.redis.xrange(stream, min=low, max=high, count=count))
        else:
            # Whether Redis still holds the execution, in the same round trip: if not, the
            # database answers.
            pipe = self.redis.pipeline(transaction=False)
            pipe.xrange(stream, min=low, max=high, count=count)
            pipe.exists(self.keys.record(execution_id))
            entries, cached = await _done(pipe.execute())
            if not cached:
                return await self._stored_page(execution_id, after, count, upto)
        out: list[RawEvent] = []
        for entry_id, fields in entries:
            ev = RelayEvent.from_json(fields[b"e"])
            ev.id = int(as_str(entry_id).split("-", 1)[0])
            out.append(ev)
        return out

    async def _stored_page(
        self, execution_id: str, after: int, count: int, upto: int | None
    ) -> list[RawEvent]:
        """A history page from the database (Redis forgot the execution): the same envelopes."""
        assert self.history is not None
        if upto is not None:
            count = max(0, min(count, upto - after))
        envelopes = await self._db(self.history.read_events, execution_id, after, count)
        return [RelayEvent.from_json(e) for e in envelopes]

    async def output(
        self,
        execution_id: str,
        *,
        page: int = 500,
        host: str | None = None,
        step: str | None = None,
    ) -> AsyncIterator[str]:
        """The `output` of every execution_output event, in id order; only `host`'s (a
        fan-out step's host) and only step `step`'s (its id) when given."""
        after = 0
        while True:
            events = await self.history_page(execution_id, after, page)
            for ev in events:
                if ev.event != "execution_output":
                    continue
                payload = ev.payload()
                if host is not None and payload.get("host") != host:
                    continue
                if step is not None and payload.get("stepId") != step:
                    continue
                yield str(payload["output"])
            if len(events) < page:
                return
            after = events[-1].id
