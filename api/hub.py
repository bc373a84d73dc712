"""The relay's one pub/sub connection, fanned out to every client's bounded inbox.

One connection per relay process subscribes the channels its clients need, reference-counted:
an execution's channel while someone follows it, the all-executions channel while someone
listens to all. Each message becomes one `RawEvent` (the payload is never parsed) shared by the
inboxes of the clients of that channel.

Pub/sub is only the fast path (see `events.subscriber`): a client's inbox never blocks the hub;
when it is full the hub drops events for that client only and flags it, and the client catches
up from the history. Whenever the connection is lost and made again, `generation` goes up and
every inbox is woken: what was published meanwhile is in the history, and each client reads it.
Redis may also lose a message without any of that (it does not say), so once per
`check_interval_s` the hub compares each followed execution's sequence counter with the last
id its channel delivered, and flags the inboxes of a channel that fell behind: one GET per
execution and interval, whatever the number of clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import Any

import redis
import redis.asyncio as aioredis

from api.inbox import ClientQueue, Route
from api.options import RelayOptions
from events.errors import EventDecodeError
from events.subscriber import as_is_async
from events.wire import RawEvent

log = logging.getLogger(__name__)

_REDIS_ERRORS = (redis.RedisError, OSError)
# How long subscribe() waits for Redis to confirm a new channel before it returns anyway.
CONFIRM_TIMEOUT_S = 2.0
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


class RelayEvent(RawEvent):
    """A RawEvent that keeps its client forms, made once and written to every client: the SSE
    frame (bytes around the envelope's bytes) and, for WebSocket text frames, the text."""

    __slots__ = ("_sse", "_text", "received_at")

    def __init__(self, id: int, event: str, data: bytes) -> None:
        super().__init__(id, event, data)
        self._sse: bytes | None = None
        self._text: str | None = None
        # When the hub's pub/sub connection received it (time.monotonic()); None when it was read
        # from the history. For the delivery latency metric.
        self.received_at: float | None = None

    @property
    def sse(self) -> bytes:
        if self._sse is None:
            data = self.data
            if b"\n" in data or b"\r" in data:  # never from our publisher (JSON escapes them)
                data = b"\ndata: ".join(_LINE_BREAK.split(data))
            self._sse = b"id: %d\nevent: %s\ndata: %s\n\n" % (self.id, self.event.encode(), data)
        return self._sse

    @property
    def text(self) -> str:
        # ASGI takes a WebSocket text frame as str: decoded once here, for every client.
        if self._text is None:
            self._text = self.data.decode()
        return self._text


class Hub:
    """Routes the messages of one pub/sub connection to the inboxes that registered for them."""

    def __init__(self, client: aioredis.Redis, options: RelayOptions) -> None:
        # A client of its own: its pool holds only this connection.
        self._client = client
        # Its pings, reconnects and lost-message checks: the hub_* and lost_message_check_s.
        self._options = options
        self._routes: dict[bytes, Route] = {}
        # Per execution channel: its sequence counter's key and the highest id it delivered.
        self._seq_keys: dict[bytes, str] = {}
        self._seen: dict[bytes, int] = {}
        self._wire: set[bytes] = set()
        self._pending: dict[bytes, list[asyncio.Future[None]]] = {}
        self._pubsub: Any = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._checker: asyncio.Task[None] | None = None
        self._syncs: set[asyncio.Task[Any]] = set()
        self.generation = 0
        self.reconnects = 0
        self.messages = 0
        self.lost_messages = 0
        self.connected = False

    # -- life ------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="cloudops-hub")
            self._checker = asyncio.create_task(self._check_loop(), name="cloudops-hub-check")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, self._checker, *self._syncs) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, *_REDIS_ERRORS):
                await t
        self._task = self._checker = None
        await self._client.aclose()

    # -- clients ---------------------------------------------------------------------------
    async def subscribe(
        self, channel: str, queue: ClientQueue, *, seq_key: str | None = None
    ) -> None:
        """Route `channel` to `queue`; returns once Redis confirmed the subscription (or the
        hub is disconnected: it subscribes on reconnect, and bumps `generation` then).
        With `seq_key` (an execution's counter) the channel is checked for lost messages."""
        ch = channel.encode()
        self._routes.setdefault(ch, Route()).live.add(queue)
        if seq_key is not None:
            self._seq_keys[ch] = seq_key
        fut = await self._sync(ch)
        if fut is not None:
            # A lost confirmation costs little: id jumps and the lost-message check cover it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CONFIRM_TIMEOUT_S):
                    await asyncio.shield(fut)

    def unsubscribe(self, channel: str, queue: ClientQueue) -> None:
        """Stop routing to `queue` at once; the wire UNSUBSCRIBE happens in the background, so
        this is safe in a cancelled client's cleanup."""
        ch = channel.encode()
        queues = self._routes.get(ch)
        if queues is None:
            return
        queues.discard(queue)
        if not queues:
            del self._routes[ch]
            self._seq_keys.pop(ch, None)
            self._seen.pop(ch, None)
            task = asyncio.get_running_loop().create_task(self._sync(ch))
            self._syncs.add(task)
            task.add_done_callback(self._syncs.discard)

    def channels(self) -> int:
        return len(self._routes)

    def clients(self) -> int:
        return sum(len(q) for q in self._routes.values())

    async def _sync(self, ch: bytes) -> asyncio.Future[None] | None:
        """Make the wire match the routes for one channel; returns a confirmation to await."""
        async with self._lock:
            ps = self._pubsub
            if ps is None:
                return None
            want = ch in self._routes
            try:
                if want and ch not in self._wire:
                    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                    self._pending.setdefault(ch, []).append(fut)
                    await ps.subscribe(ch)
                    self._wire.add(ch)
                    return fut
                if not want and ch in self._wire:
                    await ps.unsubscribe(ch)
                    self._wire.discard(ch)
                    return None
            except _REDIS_ERRORS as e:
                # The reader notices the broken connection and reconnects.
                log.info("hub: (un)subscribe failed: %s", e)
                return None
            if want and ch in self._pending:
                fut = asyncio.get_running_loop().create_future()
                self._pending[ch].append(fut)
                return fut
            return None

    # -- the reader ------------------------------------------------------------------------
    def _bump(self) -> None:
        self.generation += 1
        for route in self._routes.values():
            for q in route.all():
                q.notify()

    async def _on_reconnect(self, _conn: object) -> None:
        # redis-py may reconnect and resubscribe by itself; whatever was published meanwhile
        # is lost on the channel, so clients must read the history.
        self._bump()

    def _confirm(self, ch: bytes) -> None:
        for fut in self._pending.pop(ch, []):
            if not fut.done():
                fut.set_result(None)

    def _confirm_all(self) -> None:
        for ch in list(self._pending):
            self._confirm(ch)

    async def _run(self) -> None:
        backoff_s = 0.1
        while True:
            ps: Any = self._client.pubsub(push_handler_func=as_is_async)
            try:
                await ps.connect()
                ps.connection.register_connect_callback(self._on_reconnect)
                async with self._lock:
                    self._pubsub = ps
                    self._wire = set(self._routes)
                    if self._wire:
                        for ch in self._wire:
                            self._pending.setdefault(ch, [])
                        await ps.subscribe(*self._wire)
                if self.reconnects:
                    log.warning("hub: Redis pub/sub connection re-established")
                self.connected = True
                self._bump()
                backoff_s = 0.1
                await self._pump(ps)
            except _REDIS_ERRORS as e:
                if self.connected:
                    log.warning("hub: Redis pub/sub connection lost (%s); reconnecting", e)
                else:
                    log.info("hub: cannot reach Redis (%s); retrying in %.1f s", e, backoff_s)
            finally:
                self.connected = False
                self._pubsub = None
                self._wire = set()
                self._confirm_all()
                if ps.connection is not None:
                    ps.connection.deregister_connect_callback(self._on_reconnect)
                with contextlib.suppress(*_REDIS_ERRORS):
                    await ps.aclose()
            self.reconnects += 1
            self._bump()
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, self._options.hub_reconnect_max_s)

    async def _pump(self, ps: Any) -> None:
        loop = asyncio.get_running_loop()
        last_ping = loop.time()
        ping_sent: float | None = None
        while True:
            msg = await ps.get_message(timeout=min(1.0, self._options.hub_ping_interval_s))
            now = loop.time()
            if msg is not None:
                kind = msg["type"]
                if kind == "message":
                    self._route(msg["channel"], msg["data"])
                elif kind == "subscribe":
                    self._confirm(msg["channel"])
                elif kind == "pong":
                    ping_sent = None
            if ping_sent is not None and now - ping_sent > self._options.hub_ping_timeout_s:
                raise redis.ConnectionError("no answer to PING on the pub/sub connection")
            if ping_sent is None and now - last_ping >= self._options.hub_ping_interval_s:
                await ps.ping("cloudops-hub")
                last_ping = ping_sent = now

    def _route(self, channel: bytes, data: bytes) -> None:
        route = self._routes.get(channel)
        if not route:
            return
        try:
            ev = RelayEvent.from_json(data)
        except (EventDecodeError, UnicodeDecodeError) as e:
            log.warning("hub: dropping a malformed message on %r: %s", channel, e)
            return
        ev.received_at = time.monotonic()
        self.messages += 1
        if channel in self._seq_keys and ev.id > self._seen.get(channel, 0):
            self._seen[channel] = ev.id
        route.put(ev)

    # -- lost messages ---------------------------------------------------------------------
    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(self._options.lost_message_check_s)
            try:
                await self.check_lost()
            except _REDIS_ERRORS as e:
                log.info("hub: lost-message check failed: %s", e)

    async def check_lost(self) -> None:
        """Flag the clients of every execution channel whose counter is past what it
        delivered: a message was lost (or is still in flight; a needless read is cheap)."""
        channels = [ch for ch in self._seq_keys if ch in self._routes]
        if not channels or not self.connected:
            return
        pipe = self._client.pipeline(transaction=False)
        for ch in channels:
            pipe.get(self._seq_keys[ch])
        values = await pipe.execute()
        for ch, value in zip(channels, values, strict=True):
            if value is None or ch not in self._routes:
                continue
            seq = int(value)
            if seq > self._seen.get(ch, 0):
                self._seen[ch] = seq
                self.lost_messages += 1
                for q in self._routes[ch].all():
                    q.flag_lagging()
