"""Read an execution's events: history first, then live, with no gap and no duplicate.

Pub/sub is at-most-once (a dropped or restarted connection loses what was published meanwhile,
and Redis cuts off a slow subscriber without telling anyone), so it is only the fast path. The
history stream is the truth: every event carries its sequence id, and whenever an id jumps, the
connection breaks, or the channel stays quiet for `poll_interval_s`, the follower reads the
history from its last id. Subscribing happens before the first history read, so an event is
always either in the history read or on the channel afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import KW_ONLY, InitVar, dataclass, field
from typing import Any

import redis

from events.keys import Keys
from events.wire import RawEvent

log = logging.getLogger(__name__)

_PAGE = 1000


def as_is(response: Any) -> Any:
    """Push handler for pub/sub: the message unchanged. redis-py 8.1's default handler formats
    every message into a discarded debug string (redis-py #4230), ~200 us per 64 KiB event:
    half of what a subscriber spent. Passed as `push_handler_func` it is skipped entirely."""
    return response


async def as_is_async(response: Any) -> Any:
    """`as_is` for redis.asyncio's pub/sub, whose parser awaits the handler."""
    return response


def read_history(
    client: redis.Redis, keys: Keys, execution_id: str, after: int = 0, count: int | None = None
) -> list[RawEvent]:
    """Events with id > after, oldest first (at most `count`)."""
    entries: Any = client.xrange(
        keys.history(execution_id), min=f"{after + 1}-0", max="+", count=count
    )
    return [entry_event(entry_id, fields) for entry_id, fields in entries]


def entry_event(entry_id: bytes | str, fields: dict[Any, Any]) -> RawEvent:
    """The event of one history entry (id `<seq>-0`, field `e`)."""
    raw_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    data: bytes = fields[b"e"] if b"e" in fields else fields["e"].encode()
    ev = RawEvent.from_json(data)
    ev.id = int(raw_id.split("-", 1)[0])
    return ev


def output_tail(client: redis.Redis, keys: Keys, execution_id: str, limit_chars: int) -> str:
    """The last `limit_chars` characters of the execution's output, from its history: what a
    cancelled playbook reports as partialOutput, whatever host ran its earlier steps."""
    parts: list[str] = []
    size = 0
    upper = "+"
    while size < limit_chars:
        entries: Any = client.xrevrange(keys.history(execution_id), max=upper, count=_PAGE)
        for entry_id, fields in entries:
            ev = entry_event(entry_id, fields)
            upper = f"({ev.id}-0"
            if ev.event == "execution_output":
                text = str(ev.payload()["output"])
                parts.append(text)
                size += len(text)
                if size >= limit_chars:
                    break
        if len(entries) < _PAGE:
            break
    joined = "".join(reversed(parts))
    return joined[-limit_chars:] if len(joined) > limit_chars else joined


def iter_history(
    client: redis.Redis, keys: Keys, execution_id: str, after: int = 0
) -> Iterator[RawEvent]:
    while True:
        page = read_history(client, keys, execution_id, after, count=_PAGE)
        yield from page
        if len(page) < _PAGE:
            return
        after = page[-1].id


@dataclass(eq=False, repr=False)
class Follower:
    """Iterate one execution's events after `after`; ends after `execution_complete`.

    `stop()` (from another thread) or `idle_timeout_s` end it early.
    """

    client: redis.Redis
    keys: Keys
    execution_id: str
    after: InitVar[int] = 0
    _: KW_ONLY
    poll_interval_s: float = 0.5
    idle_timeout_s: float | None = None
    last_id: int = field(init=False)
    # History reads (on each subscribe and on a gap in the ids), and connections to Redis lost.
    refills: int = field(default=0, init=False)
    reconnects: int = field(default=0, init=False)
    _stopped: bool = field(default=False, init=False)
    _done: bool = field(default=False, init=False)

    def __post_init__(self, after: int) -> None:
        self.last_id = after

    def stop(self) -> None:
        self._stopped = True

    def _take(self, ev: RawEvent) -> bool:
        """Accept an event in order; True if it was new."""
        if ev.id <= self.last_id:
            return False
        self.last_id = ev.id
        if ev.terminal:
            self._done = True
        return True

    def _refill(self) -> Iterator[RawEvent]:
        # History is the truth: if Redis lost entries (restart without persistence) we take
        # what it holds after our last id rather than wait for ids that will never come.
        for ev in iter_history(self.client, self.keys, self.execution_id, self.last_id):
            if self._take(ev):
                yield ev
                if self._done:
                    return

    def __iter__(self) -> Iterator[RawEvent]:
        channel = self.keys.channel(self.execution_id)
        last_seen = time.monotonic()
        pubsub: redis.client.PubSub | None = None
        try:
            while not self._done and not self._stopped:
                try:
                    if pubsub is None:
                        pubsub = self.client.pubsub(  # type: ignore[no-untyped-call]
                            ignore_subscribe_messages=True, push_handler_func=as_is
                        )
                        pubsub.subscribe(channel)
                        self.refills += 1
                        yield from self._refill()
                        continue
                    msg = pubsub.get_message(timeout=self.poll_interval_s)
                except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                    log.info("follower of %s lost Redis (%s); resubscribing", self.execution_id, e)
                    self.reconnects += 1
                    if pubsub is not None:
                        _close_quietly(pubsub)
                    pubsub = None
                    time.sleep(0.05)
                    continue
                if msg is None or msg.get("type") != "message":
                    if (
                        self.idle_timeout_s is not None
                        and time.monotonic() - last_seen > self.idle_timeout_s
                    ):
                        return
                    # Quiet channel: maybe a message was lost; the history says for sure.
                    try:
                        for ev in self._refill():
                            last_seen = time.monotonic()
                            yield ev
                    except (redis.ConnectionError, redis.TimeoutError, OSError):
                        _close_quietly(pubsub)
                        pubsub = None
                    continue
                last_seen = time.monotonic()
                ev = RawEvent.from_json(msg["data"])
                if ev.id > self.last_id + 1:
                    self.refills += 1
                    yield from self._refill()
                if self._take(ev):
                    yield ev
        finally:
            if pubsub is not None:
                _close_quietly(pubsub)


def _close_quietly(pubsub: redis.client.PubSub) -> None:
    with contextlib.suppress(redis.RedisError, OSError):
        pubsub.close()
