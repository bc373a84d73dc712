"""How uvicorn serves the relay, with the limits only the server can enforce.

uvicorn 0.54 bounds header size only with its h11 parser (`h11_max_incomplete_event_size`),
has no header-read timeout (its keep-alive timeout starts after a response), and its
`limit_concurrency` answers 503 only once a request's headers are complete, so a socket that
stops mid-header holds its slot forever. `GuardedHttpToolsProtocol` (its httptools protocol
with three additions) closes a connection whose request line and headers are past
`max_header_bytes` (431) or have not all arrived `header_timeout_s` after the connection or
the request began (408), and answers 503 and closes at once when `max_connections` are open.
Each is counted in `api.limits.REFUSALS` (and so in /metrics). Both protocols put the
connection's transport in the scope, for the stream writers' buffer bound (api.limits).

WebSocket messages from clients are small JSON: `ws_max_size` is 64 KiB.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from api.limits import REFUSALS, TRANSPORT_KEY
from events.settings import Settings

log = logging.getLogger(__name__)

WS_MAX_MESSAGE_BYTES = 64 * 1024


def _plain(status: int, reason: str, text: str) -> bytes:
    body = text.encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, bounded: see the module docstring."""

    max_header_bytes = 16 * 1024
    header_timeout_s = 10.0
    max_connections = 1000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_bytes = 0
        self._in_headers = True
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            self._refuse("connections", 503, "Service Unavailable", "too many connections")
            return
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # While a request's headers are being read, feed at most what the bound still allows:
        # the parser then never holds more than `max_header_bytes` of one request's head.
        while data and self._in_headers and not self.transport.is_closing():
            room = self.max_header_bytes - self._header_bytes
            if room <= 0:
                self._refuse(
                    "header_too_large",
                    431,
                    "Request Header Fields Too Large",
                    f"request line and headers: larger than {self.max_header_bytes} bytes",
                )
                return
            piece, data = data[:room], data[room:]
            self._header_bytes += len(piece)
            super().data_received(piece)
            upgraded = self.transport.get_protocol()
            if upgraded is not self:  # upgraded to a WebSocket: the rest is its
                if data and isinstance(upgraded, asyncio.Protocol):
                    upgraded.data_received(data)
                return
        if data and not self.transport.is_closing():
            super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[TRANSPORT_KEY] = self.transport  # type: ignore[literal-required]
        self._in_headers = True
        if self._header_timer is None:
            self._start_header_timer()

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._header_bytes = 0  # the next request on this connection counts from zero
        self._stop_header_timer()
        super().on_headers_complete()

    # -- helpers ---------------------------------------------------------------------------
    def _start_header_timer(self) -> None:
        # Within the last quarter of the timeout, at random: connections opened together (a
        # flood of half-open ones) would otherwise all be closed, and come back, in the same
        # instant, a stall every other client would feel.
        delay_s = self.header_timeout_s * random.uniform(0.75, 1.0)
        self._header_timer = self.loop.call_later(delay_s, self._header_timeout)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        # Between two requests the timer does not run: uvicorn's keep-alive timeout applies,
        # and the next request's first byte starts this timer again (on_message_begin).
        if not self._in_headers or self.transport.is_closing():
            return
        self._refuse(
            "header_timeout",
            408,
            "Request Timeout",
            f"request line and headers: not received within {self.header_timeout_s:g} s",
        )

    def _refuse(self, reason: str, status: int, phrase: str, text: str) -> None:
        REFUSALS.refuse(reason)
        self._stop_header_timer()
        self._in_headers = False
        if not self.transport.is_closing():
            self.transport.write(_plain(status, phrase, text))
            self.transport.close()


class RelayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, putting its transport in the scope (api.limits)."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # absent when the handshake was refused
            scope[TRANSPORT_KEY] = self.transport


def guarded_protocol(settings: Settings) -> type[GuardedHttpToolsProtocol]:
    """The protocol class with this relay's limits (uvicorn instantiates it per connection)."""
    return type(
        "RelayHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "max_header_bytes": settings.max_header_bytes,
            "header_timeout_s": settings.header_timeout_s,
            "max_connections": settings.max_connections,
        },
    )


def relay_config(
    app: Any, settings: Settings, *, host: str, port: int, **kw: Any
) -> uvicorn.Config:
    """uvicorn's Config for the relay: its limits, and a short graceful shutdown (streams
    never end by themselves: a restart must not wait on them; clients resume)."""
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "http": guarded_protocol(settings),
        "ws": RelayWebSocketProtocol,
        "ws_max_size": WS_MAX_MESSAGE_BYTES,
        "timeout_graceful_shutdown": 3,
        "log_level": "info",
    }
    options.update(kw)
    return uvicorn.Config(app, **options)


def serve(app: Any, settings: Settings, *, host: str, port: int, **kw: Any) -> None:
    uvicorn.Server(relay_config(app, settings, host=host, port=port, **kw)).run()
