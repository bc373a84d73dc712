"""Server-Sent Events: one response that writes a feed's batches as they come.

Each event is `id: <seq>`, `event: <name>`, `data: <envelope JSON>`. The stream opens with a
`retry:` hint, pings with a comment line while idle, and ends after execution_complete. A
client whose socket takes nothing for `stall_limit_s`, or that leaves more than
`stream_buffer_bytes` waiting while it takes nothing (`StreamGuard`), gets a last
`: error: ...` comment (if it still fits) and is closed; it resumes with Last-Event-ID. A
stream also ends when the token it was opened with is no longer valid. Writes are at most
`WRITE_BYTES`, so what one client holds in the relay is bounded by its inbox, one write and
the transport's buffer, and its socket's kernel buffer is fixed (`limit_send_buffer`).
A plain ASGI response rather than StreamingResponse because the writer must bound every send.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Literal

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.auth import Grant
from api.feed import AllFeed, ExecutionFeed
from api.hub import RelayEvent
from api.limits import TooManyStreams, limit_send_buffer, too_many_streams, transport_of
from api.metrics import RelayMetrics
from api.relay import Relay
from api.stream_guard import StreamGuard
from events.wire import RawEvent

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# One write to the socket at most (a batch is written in pieces of about this size). As much as
# a stream's socket holds unsent (api.limits.UNSENT_BYTES): a client that reads nothing takes
# one or two pieces before its send waits, so a bigger piece was joined and copied twice for
# nothing (the hostile-load fault test's first output burst to 200 such clients).
WRITE_BYTES = 16 * 1024
Outcome = Literal["done", "stalled", "buffer", "revoked", "disconnected"]


def observe_delivery(metrics: RelayMetrics, first: RawEvent) -> None:
    """The delivery latency of a write, by its first event (its oldest), if it came live."""
    received = getattr(first, "received_at", None)
    if received is not None:
        metrics.delivery.observe(time.monotonic() - received)


def format_event(ev: RawEvent) -> bytes:
    if isinstance(ev, RelayEvent):
        return ev.sse  # formatted once for every client
    return RelayEvent(ev.id, ev.event, ev.data).sse


def format_batch(batch: list[RawEvent]) -> bytes:
    return b"".join(format_event(ev) for ev in batch)


def format_pieces(batch: list[RawEvent], size_bytes: int = WRITE_BYTES) -> Iterator[bytes]:
    """The batch's SSE frames, joined into writes of about `size_bytes` (an event is never
    split; a bigger one is a write of its own)."""
    group: list[bytes] = []
    size = 0
    for ev in batch:
        frame = format_event(ev)
        if group and size + len(frame) > size_bytes:
            yield b"".join(group)
            group, size = [], 0
        group.append(frame)
        size += len(frame)
    if group:
        yield group[0] if len(group) == 1 else b"".join(group)


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(
        self, relay: Relay, feed: ExecutionFeed | AllFeed, grant: Grant, address: str
    ) -> None:
        super().__init__(headers=SSE_HEADERS, media_type="text/event-stream")
        # An endless body: no content-length (uvicorn then sends it chunked).
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self._relay = relay
        self._feed = feed
        self._grant = grant
        self._address = address
        self._guard: StreamGuard | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = self._relay
        try:
            with relay.slots.hold(self._grant.token_id, self._address):
                await self._stream(scope, receive, send)
        except TooManyStreams as e:
            await too_many_streams(e)(scope, receive, send)

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = self._relay
        transport = transport_of(scope)
        limit_send_buffer(transport, relay.settings.stream_socket_buffer_bytes)
        self._guard = StreamGuard(relay, transport, [self._feed])
        relay.clients["sse"] += 1
        try:
            # Registered with the hub before the first byte: a client that has read the
            # `retry:` line gets every event published after it.
            await self._feed.open()
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            hint = f"retry: {relay.options.sse_retry_ms}\n\n".encode()
            await send({"type": "http.response.body", "body": hint, "more_body": True})
            outcome = await self._run(receive, send)
            if outcome == "done":
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            elif outcome != "disconnected":
                await self._drop(send, outcome)
        finally:
            self._feed.close()
            relay.clients["sse"] -= 1

    async def _run(self, receive: Receive, send: Send) -> Outcome:
        assert self._guard is not None
        relay = self._relay
        pump = asyncio.create_task(self._pump(send))
        watch = asyncio.create_task(_wait_disconnect(receive))
        guard = asyncio.create_task(self._guard.watch())
        revoked = asyncio.create_task(
            relay.auth.until_revoked(self._grant.token_id, relay.settings.stream_auth_recheck_s)
        )
        tasks = (pump, watch, guard, revoked)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if pump.done() and not pump.cancelled() and pump.exception() is None:
            return pump.result()
        if guard.done() and not guard.cancelled() and guard.exception() is None:
            return guard.result()
        if revoked.done() and not revoked.cancelled() and revoked.exception() is None:
            return "revoked"
        return "disconnected"

    async def _pump(self, send: Send) -> Literal["done"]:
        assert self._guard is not None
        guard = self._guard
        loop = asyncio.get_running_loop()
        ping_s = self._relay.settings.sse_ping_interval_s
        last_send = loop.time()
        async with contextlib.aclosing(self._feed.batches()) as batches:
            async for batch in batches:
                if batch:
                    pieces: Iterator[bytes] = format_pieces(batch)
                elif loop.time() - last_send >= ping_s:
                    pieces = iter((b": ping\n\n",))
                else:
                    continue
                for chunk in pieces:
                    # uvicorn's send waits while the socket's buffer is full: the guard times it.
                    with guard.sending(len(chunk)):
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                last_send = loop.time()
                if batch:
                    observe_delivery(self._relay.metrics, batch[0])
        return "done"

    async def _drop(self, send: Send, outcome: Outcome) -> None:
        feed = self._feed
        what = f"{getattr(feed, 'execution_id', '*')} at id {feed.last_id}"
        options = self._relay.options
        await self._relay.note_dropped("SSE", what, outcome)
        # A comment, not an event: every SSE parser skips it, and EventSource reconnects with
        # Last-Event-ID by itself. The socket is full, so it may not fit; uvicorn then closes.
        if outcome == "revoked":
            reason = ": error: the token of this stream is no longer valid\n\n"
        elif outcome == "buffer":
            reason = (
                f": error: slow client, left more than {self._relay.settings.stream_buffer_bytes}"
                " bytes waiting; reconnect with Last-Event-ID to resume\n\n"
            )
        else:
            reason = (
                f": error: slow client, read nothing for {options.stall_limit_s:g} s;"
                " reconnect with Last-Event-ID to resume\n\n"
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await send(
                    {"type": "http.response.body", "body": reason.encode(), "more_body": False}
                )


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
