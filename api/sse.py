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
import re
from typing import Literal

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.feed import AllFeed, ExecutionFeed
from api.relay import Relay
from events.models import RawEvent

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def format_event(ev: RawEvent) -> str:
    data = ev.data
    if "\n" in data or "\r" in data:  # never from our publisher, whose JSON escapes them
        data = "\ndata: ".join(_LINE_BREAK.split(data))
    return f"id: {ev.id}\nevent: {ev.event}\ndata: {data}\n\n"


def format_batch(batch: list[RawEvent]) -> bytes:
    return "".join(format_event(ev) for ev in batch).encode()


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, relay: Relay, feed: ExecutionFeed | AllFeed) -> None:
        super().__init__(headers=SSE_HEADERS, media_type="text/event-stream")
        # An endless body: no content-length (uvicorn then sends it chunked).
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self._relay = relay
        self._feed = feed

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
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (pump, watch):
                t.cancel()
            await asyncio.gather(pump, watch, return_exceptions=True)
        if pump.done() and not pump.cancelled():
            return pump.result()
        return "disconnected"

    async def _pump(self, send: Send) -> Literal["done", "stalled"]:
        loop = asyncio.get_running_loop()
        ping_s = self._relay.settings.sse_ping_interval_s
        stall_s = self._relay.options.stall_limit_s
        last_send = loop.time()
        async with contextlib.aclosing(self._feed.batches()) as batches:
            async for batch in batches:
                if batch:
                    chunk = format_batch(batch)
                elif loop.time() - last_send >= ping_s:
                    chunk = b": ping\n\n"
                else:
                    continue
                try:
                    async with asyncio.timeout(stall_s):
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except TimeoutError:
                    return "stalled"
                last_send = loop.time()
        return "done"

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
