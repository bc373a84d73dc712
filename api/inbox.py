"""Each client's inbox of live events (`ClientQueue`), and the inboxes of one channel
(`Route`), which the hub (`api.hub`) fills from its one pub/sub connection.

An inbox is bounded in bytes and in count; one that overflowed is parked: the hub puts nothing
more into it until its client has read the history (`ClientQueue.reset`), and counts what it
let go once per event for the whole channel, not once per parked inbox.
"""

from __future__ import annotations

import asyncio
from collections import deque

from events.settings import MIB
from events.wire import RawEvent


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class ClientQueue:
    """One client's inbox of live events, bounded in bytes and in count.

    Once it overflowed, its events are let go (the client reads the history from its last id
    instead) and only their size is counted: `behind_bytes` is how far the client is behind
    the live stream, what the stream writers hold against the per-stream bound."""

    __slots__ = (
        "_bytes",
        "_dropped_bytes",
        "_items",
        "_mark",
        "_parked",
        "_waiter",
        "lagging",
        "max_bytes",
        "max_events",
        "overflowed",
    )

    def __init__(self, max_bytes: int = 1 * MIB, max_events: int = 1024) -> None:
        self._items: deque[RawEvent] = deque()
        self._bytes = 0
        self._dropped_bytes = 0
        self._waiter: asyncio.Future[bool] | None = None
        # Once it overflowed, the hub stops putting events into it (`Route.park`): the bytes
        # it let go since are the route's count past `_mark`.
        self._parked: Route | None = None
        self._mark = 0
        self.max_bytes = max_bytes
        self.max_events = max_events
        self.overflowed = False
        self.lagging = False  # the channel missed a message: read the history

    def put(self, ev: RawEvent) -> bool:
        """Called by the hub; never blocks. Past the bound the event is dropped and flagged:
        True then, and later events are useless here (the client reads the history from its
        last id), so the hub need not put them."""
        size = len(ev.data)  # bytes
        if self.overflowed:
            self._dropped_bytes += size
            return False
        if self._items and (
            self._bytes + size > self.max_bytes or len(self._items) >= self.max_events
        ):
            self.overflowed = True
            self._dropped_bytes += self._bytes + size
            self._items.clear()  # never delivered now: the history read replaces them
            self._bytes = 0
            self._wakeup()
            return True
        self._items.append(ev)
        self._bytes += size
        self._wakeup()
        return False

    def take(self) -> list[RawEvent]:
        items = list(self._items)
        self._items.clear()
        self._bytes = 0
        return items

    def reset(self) -> None:
        """Forget everything queued and the flags (before a history read); the hub puts
        events into it again."""
        self.take()
        self.overflowed = False
        self.lagging = False
        self._dropped_bytes = 0
        route, self._parked = self._parked, None
        if route is not None:
            route.unpark(self)

    def parked_on(self, route: Route | None) -> None:
        """The route stopped (or, None, no longer) putting events into this inbox: what it
        routes from now on counts as let go (`behind_bytes`)."""
        self._parked = route
        self._mark = 0 if route is None else route.routed_bytes

    def flag_lagging(self) -> None:
        self.lagging = True
        self._wakeup()

    @property
    def needs_history(self) -> bool:
        return self.overflowed or self.lagging

    def notify(self) -> None:
        self._wakeup()

    def _wakeup(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    @property
    def behind_bytes(self) -> int:
        """Bytes of live events not yet taken: queued, or dropped since it overflowed."""
        parked = self._parked
        let_go = 0 if parked is None else parked.routed_bytes - self._mark
        return self._bytes + self._dropped_bytes + let_go

    async def wait(self, timeout_s: float) -> bool:
        """Wait for an event, an overflow or a notification; False when the timeout came first.

        A bare future and one timer: this runs once per event per client, and asyncio.timeout
        around an Event costs several times more.
        """
        if self._items or self.needs_history:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(timeout_s, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None


class Route:
    """The inboxes of one channel: `live` get its events; `parked` overflowed and wait for
    their client to read the history, so an event costs nothing per parked inbox (200 slow
    clients of one execution cost 200 puts per event before, for as long as they stayed),
    and each one's `behind_bytes` is what the channel routed since it was parked."""

    __slots__ = ("live", "parked", "routed_bytes")

    def __init__(self) -> None:
        self.live: set[ClientQueue] = set()
        self.parked: set[ClientQueue] = set()
        self.routed_bytes = 0

    def __bool__(self) -> bool:
        return bool(self.live or self.parked)

    def __len__(self) -> int:
        return len(self.live) + len(self.parked)

    def all(self) -> list[ClientQueue]:
        return [*self.live, *self.parked]

    def discard(self, q: ClientQueue) -> None:
        self.live.discard(q)
        self.parked.discard(q)
        q.parked_on(None)

    def park(self, q: ClientQueue) -> None:
        if q in self.live:
            self.live.discard(q)
            self.parked.add(q)
            q.parked_on(self)

    def unpark(self, q: ClientQueue) -> None:
        if q in self.parked:
            self.parked.discard(q)
            self.live.add(q)

    def put(self, ev: RawEvent) -> None:
        full = [q for q in self.live if q.put(ev)]
        self.routed_bytes += len(ev.data)
        for q in full:
            self.park(q)
