"""The relay-memory baseline: a bare ASGI app under the same uvicorn that holds each request
as an endless, idle event stream, and nothing else.

    python -m uvicorn tests.benchmarks.bare_sse:app --host 127.0.0.1 --port PORT
"""

from __future__ import annotations

from typing import Any

Message = dict[str, Any]


async def app(scope: Message, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] == "/healthz":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"retry: 3000\n\n", "more_body": True})
    while (await receive())["type"] != "http.disconnect":
        pass
