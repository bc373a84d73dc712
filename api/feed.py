"""One client's gap-free view of the events: the async twin of `events.subscriber.Follower`.

`ExecutionFeed` registers its inbox with the hub before it reads the history, so every event is
either in that read or arrives live afterwards. It then takes live events in id order, dropping
ids it already has. It reads the history again from its last id whenever an id jumps, its
inbox overflowed (the client was too slow), the hub's connection was re-established, the hub
found that the channel lost a message, or (a last resort) nothing arrived for
`idle_refill_s`. History pages are bounded in bytes, so a client catching up holds at most one
page and its inbox.

`AllFeed` is the live stream of every execution (no replay), with the same repair per execution
it has seen: an id jump, an overflow or a reconnect makes it read the missing ids from history.

Both yield batches of `RawEvent`; an empty batch is an idle tick (the writer may ping).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable

import orjson
import redis

from api.hub import Hub
from api.inbox import ClientQueue
from api.options import RelayOptions
from api.store import Store
from events.wire import RawEvent

log = logging.getLogger(__name__)

_REDIS_ERRORS = (redis.RedisError, OSError)
# Whether an execution's events may go to this client (a queue-scoped token's `*` stream).
Admit = Callable[[str], Awaitable[bool]]
_MIN_PAGE, _MAX_PAGE = 16, 1000


class _Pager:
    """Adapts the XRANGE count so that one page holds about `page_bytes`."""

    def __init__(self, page_bytes: int) -> None:
        self.page_bytes = page_bytes
        self.count = 64

    def learn(self, page: list[RawEvent]) -> None:
        if page:
            avg = max(1, sum(len(ev.data) for ev in page) // len(page))
            self.count = max(_MIN_PAGE, min(_MAX_PAGE, self.page_bytes // avg))


class _Feed:
    """What both feeds hold: an inbox registered with the hub on one channel, and a pager."""

    def __init__(
        self,
        hub: Hub,
        store: Store,
        channel: str,
        *,
        options: RelayOptions,
        queue_events: int,
        seq_key: str | None = None,
    ) -> None:
        self._hub = hub
        self._store = store
        self._options = options
        self._queue = ClientQueue(options.client_queue_bytes, queue_events)
        self._pager = _Pager(options.history_page_bytes)
        self._channel = channel
        self._seq_key = seq_key
        self._opened = False
        self.last_id = 0
        self.done = False
        self.refills = 0
        self.overflows = 0

    async def open(self) -> None:
        """Register with the hub (before any history read)."""
        if not self._opened:
            self._opened = True
            await self._hub.subscribe(self._channel, self._queue, seq_key=self._seq_key)

    def close(self) -> None:
        if self._opened:
            self._opened = False
            self._hub.unsubscribe(self._channel, self._queue)


class ExecutionFeed(_Feed):
    """Events of one execution with id > `after`, in order; ends after execution_complete."""

    def __init__(
        self,
        hub: Hub,
        store: Store,
        execution_id: str,
        after: int = 0,
        *,
        options: RelayOptions,
        queue_events: int = 1024,
        tick_s: float = 1.0,
    ) -> None:
        super().__init__(
            hub,
            store,
            store.keys.channel(execution_id),
            options=options,
            queue_events=queue_events,
            seq_key=store.keys.seq(execution_id),
        )
        self.execution_id = execution_id
        self.last_id = after
        self._tick_s = min(tick_s, options.idle_refill_s)

    @property
    def behind_bytes(self) -> int:
        return self._queue.behind_bytes

    def _take(self, ev: RawEvent) -> bool:
        if ev.terminal and ev.id <= self.last_id:
            # The execution ended at or before our resume point (`after` past its last id
            # while it ran): nothing more will come, the stream ends with it.
            self.done = True
            return False
        if ev.id <= self.last_id or self.done:
            return False
        self.last_id = ev.id
        if ev.terminal:
            self.done = True
        return True

    async def _refill(self) -> AsyncGenerator[list[RawEvent], None]:
        # History is the truth: if Redis lost entries we take what it holds after our last id.
        self.refills += 1
        backoff_s = 0.1
        while not self.done:
            count = self._pager.count
            try:
                page = await self._store.history_page(self.execution_id, self.last_id, count)
            except _REDIS_ERRORS as e:
                log.info("feed %s: history read failed (%s); retrying", self.execution_id, e)
                yield []
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 2.0)
                continue
            self._pager.learn(page)
            out = [ev for ev in page if self._take(ev)]
            if out:
                yield out
            if len(page) < count:
                return

    async def _ended(self) -> bool:
        """True when the record says the execution ended at or before our last id."""
        try:
            state = await self._store.stream_state(self.execution_id)
        except _REDIS_ERRORS:
            return False
        return (
            state is not None
            and state.complete_id is not None
            and (state.complete_id <= self.last_id)
        )

    async def _catch_up(self) -> AsyncGenerator[list[RawEvent], None]:
        """The history after our last id, then whether the record says it ended there."""
        async for page in self._refill():
            yield page
        if not self.done and await self._ended():
            self.done = True

    async def _deliver(self, events: list[RawEvent]) -> AsyncGenerator[list[RawEvent], None]:
        """Live events in id order; an id jump reads the history in between first."""
        out: list[RawEvent] = []
        for ev in events:
            if ev.id > self.last_id + 1 and not self.done:
                if out:
                    yield out
                    out = []
                async for page in self._refill():
                    yield page
            if self._take(ev):
                out.append(ev)
        if out:
            yield out

    async def batches(self) -> AsyncGenerator[list[RawEvent], None]:
        await self.open()
        q, hub = self._queue, self._hub
        loop = asyncio.get_running_loop()
        try:
            generation = hub.generation
            async for page in self._catch_up():
                yield page
            last_seen = loop.time()
            while not self.done:
                if q.needs_history or hub.generation != generation:
                    self.overflows += q.overflowed
                    q.reset()
                    generation = hub.generation
                    async for page in self._refill():
                        yield page
                elif await q.wait(self._tick_s):
                    async for page in self._deliver(q.take()):
                        yield page
                else:
                    if loop.time() - last_seen >= self._options.idle_refill_s:
                        last_seen = loop.time()
                        async for page in self._catch_up():
                            yield page
                    yield []  # an idle tick: the writer may ping
                    continue
                last_seen = loop.time()
        finally:
            self.close()


def execution_id_of(ev: RawEvent) -> str:
    """The envelope's executionId, read from its head when our publisher wrote it."""
    marker = b',"executionId":"'
    data = ev.data
    i = data.find(marker, 0, 256)
    if i > 0:
        start = i + len(marker)
        end = data.find(b'"', start)
        if end > start and b"\\" not in data[start:end]:
            return data[start:end].decode()
    return str(orjson.loads(data)["executionId"])


class AllFeed(_Feed):
    """Live events of every execution, repaired per execution from history. Infinite."""

    def __init__(
        self,
        hub: Hub,
        store: Store,
        *,
        options: RelayOptions,
        admit: Admit | None = None,
        queue_events: int = 1024,
        tick_s: float = 1.0,
        track_executions: int = 10_000,
    ) -> None:
        channel = store.keys.channel_all()
        # Which executions this client may see (a queue-scoped token); None: every one.
        self._admit = admit
        super().__init__(hub, store, channel, options=options, queue_events=queue_events)
        self._tick_s = tick_s
        self._track = track_executions
        # execution id -> last id delivered, least recently active first; self.last_id is only
        # for the writers' messages
        self._last: OrderedDict[str, int] = OrderedDict()
        self._ended: set[str] = set()

    @property
    def behind_bytes(self) -> int:
        return self._queue.behind_bytes

    def _take(self, ex: str, ev: RawEvent) -> bool:
        prev = self._last.get(ex, 0)
        if ev.id <= prev:
            return False
        self._last[ex] = ev.id
        self._last.move_to_end(ex)
        if ev.terminal:
            self._ended.add(ex)
        while len(self._last) > self._track:
            old, _ = self._last.popitem(last=False)
            self._ended.discard(old)
        return True

    async def _refill(self, ex: str, upto: int | None) -> AsyncGenerator[list[RawEvent], None]:
        self.refills += 1
        while True:
            count = self._pager.count
            try:
                page = await self._store.history_page(ex, self._last[ex], count, upto=upto)
            except (*_REDIS_ERRORS, KeyError):
                return  # best effort: the all-executions stream is live only
            self._pager.learn(page)
            out = [ev for ev in page if self._take(ex, ev)]
            if out:
                yield out
            if len(page) < count:
                return

    async def batches(self) -> AsyncGenerator[list[RawEvent], None]:
        await self.open()
        q, hub = self._queue, self._hub
        try:
            generation = hub.generation
            while True:
                if q.needs_history or hub.generation != generation:
                    self.overflows += q.overflowed
                    q.reset()
                    generation = hub.generation
                    for ex in [e for e in self._last if e not in self._ended]:
                        async for page in self._refill(ex, None):
                            yield page
                    continue
                if not await q.wait(self._tick_s):
                    yield []
                    continue
                out: list[RawEvent] = []
                for ev in q.take():
                    try:
                        ex = execution_id_of(ev)
                    except (ValueError, KeyError, TypeError):
                        continue
                    if self._admit is not None and not await self._admit(ex):
                        continue
                    prev = self._last.get(ex)
                    if prev is not None and ev.id > prev + 1:
                        if out:
                            yield out
                            out = []
                        async for page in self._refill(ex, ev.id - 1):
                            yield page
                    if self._take(ex, ev):
                        out.append(ev)
                if out:
                    yield out
        finally:
            self.close()
