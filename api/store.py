"""Async reads of what the workers wrote: records, history, counters (key layout of `events`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis

from api.hub import RelayEvent
from events.keys import Keys
from events.models import RawEvent
from events.records import ExecutionRecord, record_from_hash

T = TypeVar("T")


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


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

    status: str
    complete_id: int | None


class Store:
    def __init__(self, client: aioredis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys

    async def ping(self) -> bool:
        return bool(await _done(self.redis.ping()))

    # -- records ---------------------------------------------------------------------------
    async def record(self, execution_id: str) -> ExecutionRecord | None:
        data = await _done(self.redis.hgetall(self.keys.record(execution_id)))
        raw = {_s(k): _s(v) for k, v in data.items()}
        return record_from_hash(raw) if raw.get("status") else None

    async def recent(self, *, status: str | None = None, limit: int = 50) -> list[ExecutionRecord]:
        """Newest first, like `events.records.RecordStore.recent`."""
        out: list[ExecutionRecord] = []
        start = 0
        page = max(limit, 100)
        while len(out) < limit:
            ids: list[Any] = await _done(
                self.redis.zrevrange(self.keys.index(), start, start + page - 1)
            )
            if not ids:
                break
            pipe = self.redis.pipeline(transaction=False)
            for ex in ids:
                pipe.hgetall(self.keys.record(_s(ex)))
            for h in await _done(pipe.execute()):
                raw = {_s(k): _s(v) for k, v in h.items()}
                if raw.get("status") and (status is None or raw["status"] == status):
                    out.append(record_from_hash(raw))
                    if len(out) >= limit:
                        break
            start += page
        return out

    async def stream_state(self, execution_id: str) -> StreamState | None:
        status, complete_id = await _done(
            self.redis.hmget(self.keys.record(execution_id), ["status", "completeId"])
        )
        if status is None:
            return None
        return StreamState(_s(status), None if complete_id is None else int(complete_id))

    async def status_counts(self, limit: int) -> dict[str, int]:
        """Statuses of the `limit` most recent executions."""
        ids: list[Any] = await _done(self.redis.zrevrange(self.keys.index(), 0, limit - 1))
        pipe = self.redis.pipeline(transaction=False)
        for ex in ids:
            pipe.hget(self.keys.record(_s(ex)), "status")
        counts: dict[str, int] = {}
        for status in await _done(pipe.execute()) if ids else []:
            if status is not None:
                counts[_s(status)] = counts.get(_s(status), 0) + 1
        return counts

    async def running_count(self) -> int:
        return int(await _done(self.redis.scard(self.keys.running())))

    async def stat(self, name: str) -> int:
        v = await _done(self.redis.get(self.keys.stat(name)))
        return 0 if v is None else int(v)

    async def incr_stat(self, name: str) -> None:
        await _done(self.redis.incr(self.keys.stat(name)))

    # -- history ---------------------------------------------------------------------------
    async def history_page(
        self, execution_id: str, after: int, count: int, *, upto: int | None = None
    ) -> list[RawEvent]:
        """Events with after < id (<= upto), oldest first, at most `count`."""
        entries: Any = await _done(
            self.redis.xrange(
                self.keys.history(execution_id),
                min=f"{after + 1}-0",
                max="+" if upto is None else f"{upto}-0",
                count=count,
            )
        )
        out: list[RawEvent] = []
        for entry_id, fields in entries:
            ev = RelayEvent.from_json(fields.get(b"e") or fields["e"])
            ev.id = int(_s(entry_id).split("-", 1)[0])
            out.append(ev)
        return out

    async def output(self, execution_id: str, *, page: int = 500) -> AsyncIterator[str]:
        """The `output` of every execution_output event, in id order."""
        after = 0
        while True:
            events = await self.history_page(execution_id, after, page)
            for ev in events:
                if ev.event == "execution_output":
                    yield str(json.loads(ev.data)["payload"]["output"])
            if len(events) < page:
                return
            after = events[-1].id
