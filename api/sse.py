"""Server-Sent Events: one response that writes a feed's batches as they come.

Each event is `id: <seq>`, `event: <name>`, `data: <envelope JSON>`. The stream opens with a
`retry:` hint, pings with a comment line while idle, and ends after execution_complete. A
client whose socket takes nothing for `stall_limit_s` gets a last `: error: ...` comment (if it
still fits) and is closed; it resumes with Last-Event-ID. A plain ASGI response rather than
StreamingResponse because the writer must bound every send in time.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.feed import AllFeed, ExecutionFeed
from api.hub import RelayEvent
from api.relay import Relay
from events.models import RawEvent

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def format_event(ev: RawEvent) -> bytes:
    if isinstance(ev, RelayEvent):
        return ev.sse  # formatted once for every client
    return RelayEvent(ev.id, ev.event, ev.data).sse


def format_batch(batch: list[RawEvent]) -> bytes:
    return b"".join(format_event(ev) for ev in batch)


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, relay: Relay, feed: ExecutionFeed | AllFeed) -> None:
        super().__init__(headers=SSE_HEADERS, media_type="text/event-stream")
        # An endless body: no content-length (uvicorn then sends it chunked).
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self._relay = relay
        self._feed = feed
        self._sending_since: float | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = self._relay
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
            elif outcome == "stalled":
                await self._drop(send)
        finally:
            self._feed.close()
            relay.clients["sse"] -= 1

    async def _run(
        self, receive: Receive, send: Send
    ) -> Literal["done", "stalled", "disconnected"]:
        pump = asyncio.create_task(self._pump(send))
        watch = asyncio.create_task(_wait_disconnect(receive))
        stall = asyncio.create_task(self._watch_stall())
        tasks = (pump, watch, stall)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if pump.done() and not pump.cancelled():
            return pump.result()
        if stall.done() and not stall.cancelled():
            return "stalled"
        return "disconnected"

    async def _pump(self, send: Send) -> Literal["done"]:
        loop = asyncio.get_running_loop()
        ping_s = self._relay.settings.sse_ping_interval_s
        last_send = loop.time()
        async with contextlib.aclosing(self._feed.batches()) as batches:
            async for batch in batches:
                if batch:
                    chunk = format_batch(batch)
                elif loop.time() - last_send >= ping_s:
                    chunk = b": ping\n\n"
                else:
                    continue
                # uvicorn's send waits while the socket's buffer is full: _watch_stall times it.
                self._sending_since = loop.time()
                try:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                finally:
                    self._sending_since = None
                last_send = loop.time()
        return "done"

    async def _watch_stall(self) -> None:
        """Returns when one send has waited `stall_limit_s`: the client reads nothing.

        One check every few seconds per stream rather than a timer around every send, which
        would cost a timer per event per client."""
        loop = asyncio.get_running_loop()
        stall_s = self._relay.options.stall_limit_s
        check_s = max(0.1, min(5.0, stall_s / 4))
        while True:
            await asyncio.sleep(check_s)
            since = self._sending_since
            if since is not None and loop.time() - since >= stall_s:
                return

    async def _drop(self, send: Send) -> None:
        feed = self._feed
        what = f"{getattr(feed, 'execution_id', '*')} at id {feed.last_id}"
        await self._relay.note_dropped("SSE", what)
        # A comment, not an event: every SSE parser skips it, and EventSource reconnects with
        # Last-Event-ID by itself. The socket is full, so it may not fit; uvicorn then closes.
        reason = (
            f": error: slow client, read nothing for {self._relay.options.stall_limit_s:g} s;"
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
