"""What the relay allows one client: bounded bodies, counted streams, bounded socket buffers.

- `BodyLimit`, the outermost ASGI middleware: a request with a body is refused with 413 when
  its Content-Length (or what arrived so far of a chunked body) is past `max_body_bytes`, 408
  when it does not arrive within `body_timeout_s`, and 401 when it has no valid bearer token,
  all before the app reads or parses a byte of it. The body is read here, bounded, and handed
  to the app whole.
- `StreamSlots`: open streams per token and per client address; past either bound a new
  stream is refused with 429 naming the limit, by `StreamLimit` (an ASGI middleware, before
  the app routes the request) when its bearer token or address is already at the bound.
- `limit_send_buffer(transport)`: a stream's socket holds a fixed kernel buffer and little
  that it cannot send yet; `queued_bytes(transport)`: what it holds, in the relay (the
  transport's write buffer) and in the kernel (its send queue), so that a client that reads
  nothing is dropped by the bytes it left waiting, not only after a time.
- `REFUSALS`: every refusal and drop of this process by reason, for /metrics. The uvicorn
  protocol (api/server.py) counts those only the server sees (connections, headers).

The limits on connections and headers live in api/server.py: only the server sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import termios
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import AuthError, bearer_token
from events.errors import CloudOpsError
from events.settings import Settings

TRANSPORT_KEY = "cloudops.transport"
# Routes whose requests need a token (the console's files, /healthz and OpenAPI do not).
_TOKEN_PREFIXES = ("/api/", "/metrics")


class Refusals:
    """Requests refused and clients dropped by this process, by reason (a Prometheus counter
    each). One per process: the uvicorn protocol and the app of one relay share it."""

    def __init__(self) -> None:
        self.refused: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()

    def refuse(self, reason: str) -> None:
        self.refused[reason] += 1

    def drop(self, reason: str) -> None:
        self.dropped[reason] += 1


REFUSALS = Refusals()
REFUSAL_REASONS = (
    "body_too_large",
    "body_timeout",
    "header_too_large",
    "header_timeout",
    "connections",
    "streams_per_token",
    "streams_per_address",
)
DROP_REASONS = ("stalled", "buffer", "revoked")


def _answer(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    # "Connection: close": uvicorn closes after the answer instead of reading an unwanted body.
    return JSONResponse(
        {"detail": detail}, status_code=status, headers={"Connection": "close", **(headers or {})}
    )


def transport_of(scope: Scope) -> asyncio.Transport | None:
    """The connection's transport, put in the scope by the relay's uvicorn protocols
    (api/server.py): ASGI has no standard way to reach the socket. Without it (another server)
    the stream bound counts the relay's inbox only."""
    transport = scope.get(TRANSPORT_KEY)
    # Duck-typed: uvloop's transports are not subclasses of asyncio.Transport.
    if transport is None or not hasattr(transport, "get_write_buffer_size"):
        return None
    return cast(asyncio.Transport, transport)


class BodyLimit:
    """ASGI middleware: see the module docstring."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.max_bytes = settings.max_body_bytes
        self.timeout_s = settings.body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        length = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if length is None and not chunked:
            await self.app(scope, receive, send)
            return
        refusal = await self._precheck(scope, headers, length)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        body, refusal = await self._read(receive)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _precheck(
        self, scope: Scope, headers: dict[bytes, bytes], length: bytes | None
    ) -> JSONResponse | None:
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0:
                return _answer(400, "Content-Length: must be a non-negative integer")
            if declared > self.max_bytes:
                REFUSALS.refuse("body_too_large")
                return self._too_large()
        if str(scope.get("path", "")).startswith(_TOKEN_PREFIXES):
            return await _token_refusal(scope, headers)
        return None

    def _too_large(self) -> JSONResponse:
        return _answer(413, f"body: larger than {self.max_bytes} bytes (CLOUDOPS_MAX_BODY_BYTES)")

    async def _read(self, receive: Receive) -> tuple[bytes, JSONResponse | None]:
        parts: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return b"", _answer(400, "body: the client went away")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        REFUSALS.refuse("body_too_large")
                        return b"", self._too_large()
                    parts.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(parts), None
        except TimeoutError:
            REFUSALS.refuse("body_timeout")
            detail = f"body: not received within {self.timeout_s:g} s (CLOUDOPS_BODY_TIMEOUT_S)"
            return b"", _answer(408, detail)


async def _token_refusal(scope: Scope, headers: dict[bytes, bytes]) -> JSONResponse | None:
    """A 401 for a body on a data route without a valid token, before the body is read. The
    app checks again (this only spares the read)."""
    relay = getattr(getattr(scope.get("app"), "state", None), "relay", None)
    if relay is None:
        return None
    raw = headers.get(b"authorization")
    try:
        await relay.auth.authenticate(bearer_token(raw.decode("latin-1") if raw else None))
    except AuthError as e:
        return _answer(401, e.detail, {"WWW-Authenticate": "Bearer"})
    except CloudOpsError:
        return None  # the database does not answer: the app says so (503)
    return None


async def nesting_refused(_: Any, exc: Exception) -> JSONResponse:
    """A RecursionError while parsing or checking input (JSON or YAML nested thousands deep)
    is bad input: a 422, without the traceback of a 500."""
    return JSONResponse({"detail": "body: nested too deeply"}, status_code=422)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # the disconnect, whenever it comes

    return replay


# -- streams ------------------------------------------------------------------------------------
class TooManyStreams(Exception):
    """A new stream would pass a bound; `detail` names it."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class StreamSlots:
    """Open streams per token and per client address, in one relay process."""

    per_token: int
    per_address: int
    by_token: Counter[str] = field(default_factory=Counter)
    by_address: Counter[str] = field(default_factory=Counter)

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamSlots:
        return cls(settings.max_streams_per_token, settings.max_streams_per_address)

    @contextlib.contextmanager
    def hold(self, token_id: str, address: str) -> Iterator[None]:
        """Count one stream for its whole life; TooManyStreams when a bound is reached."""
        self.check(token_id, address)
        self.by_token[token_id] += 1
        self.by_address[address] += 1
        try:
            yield
        finally:
            for counter, key in ((self.by_token, token_id), (self.by_address, address)):
                counter[key] -= 1
                if counter[key] <= 0:
                    del counter[key]

    def check(self, token_id: str, address: str) -> None:
        """TooManyStreams (counted in REFUSALS) when one more stream would pass a bound."""
        for reason, count, bound, what, setting in (
            (
                "streams_per_token",
                self.by_token[token_id],
                self.per_token,
                "for this token",
                "TOKEN",
            ),
            (
                "streams_per_address",
                self.by_address[address],
                self.per_address,
                "from this address",
                "ADDRESS",
            ),
        ):
            if count >= bound:
                REFUSALS.refuse(reason)
                raise TooManyStreams(
                    reason,
                    f"too many open streams {what} (at most {bound},"
                    f" CLOUDOPS_MAX_STREAMS_PER_{setting})",
                )


def client_address(scope: Scope) -> str:
    """The address uvicorn reports (a trusted proxy's X-Forwarded-For when it sent one)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def too_many_streams(e: TooManyStreams) -> JSONResponse:
    return JSONResponse({"detail": e.detail}, status_code=429, headers={"Retry-After": "5"})


def is_stream_path(path: str) -> bool:
    """GET /api/events or GET /api/executions/{execution_id}/events (an id has no `/`)."""
    if path == "/api/events":
        return True
    head, _, rest = path.partition("/api/executions/")
    return head == "" and rest.endswith("/events") and rest.count("/") == 1 and len(rest) > 7


class StreamLimit:
    """ASGI middleware: an SSE request whose bearer token or address already holds its bound
    of streams is refused with 429 here, before the app routes it, solves its dependencies and
    reads the execution's state from Redis (about a millisecond of the relay's loop for each
    refusal; 300 at once stalled every open stream, measured by the hostile-load fault test).
    The token is authenticated first, so a bad one still gets the app's 401; the count only
    ever holds tokens that were valid. A stream opened with a ticket is counted by the app
    (redeeming the ticket is what names its token), which also checks again when it holds the
    slot: this only spares the work."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and is_stream_path(scope["path"]):
            refusal = await _streams_refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _streams_refusal(scope: Scope) -> JSONResponse | None:
    relay = getattr(getattr(scope.get("app"), "state", None), "relay", None)
    if relay is None or b"ticket=" in scope.get("query_string", b""):
        return None
    raw = next((v for k, v in scope.get("headers", []) if k.lower() == b"authorization"), None)
    token = bearer_token(raw.decode("latin-1") if raw else None)
    try:
        identity = await relay.auth.authenticate(token)
        relay.slots.check(identity.token_id, client_address(scope))
    except TooManyStreams as e:
        return too_many_streams(e)
    except (AuthError, CloudOpsError):
        return None  # the app answers (401, 503)
    return None


# -- socket buffers -----------------------------------------------------------------------------
# What a stream's socket may hold that the kernel cannot send yet (TCP_NOTSENT_LOWAT), and
# the transport's own write buffer past which a send waits: bytes a client has not made room
# for wait in its inbox instead, where they cost nothing per event.
UNSENT_BYTES = 16 * 1024
TRANSPORT_HIGH_BYTES = 16 * 1024
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux's value; 3.12 names it


def limit_send_buffer(transport: asyncio.Transport | None, size_bytes: int) -> None:
    """Fix the kernel send buffer of a stream's socket (Linux's autotuning would let a client
    that reads nothing hold megabytes of kernel memory), and bound what it holds unsent.

    Without the second bound a client that reads nothing took about 60 writes of one event
    each (its share of a 256 KiB kernel buffer, then 64 KiB in the transport) before its send
    waited: 200 such clients connected together cost the relay 12,000 writes in the first
    0.2 s of a stream, felt by every other client (the hostile-load fault test). Unsent bytes
    past `UNSENT_BYTES` make the socket unwritable (data in flight is not counted, so a
    distant client's throughput keeps the whole send buffer), and the transport pauses the
    stream past `TRANSPORT_HIGH_BYTES`: about 8 writes, then the client's send waits."""
    sock = _socket(transport)
    if sock is None or transport is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size_bytes)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_NOTSENT_LOWAT, UNSENT_BYTES)
    with contextlib.suppress(NotImplementedError, AttributeError):
        transport.set_write_buffer_limits(high=TRANSPORT_HIGH_BYTES)


def queued_bytes(transport: asyncio.Transport | None) -> int:
    """Bytes written to a stream and not yet taken by its client: the transport's buffer in
    the relay plus the kernel's send queue (TIOCOUTQ: sent but not acknowledged, or unsent)."""
    if transport is None or transport.is_closing():
        return 0
    waiting = transport.get_write_buffer_size()
    sock = _socket(transport)
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):
            raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            waiting += struct.unpack("i", raw)[0]
    return waiting


def _socket(transport: asyncio.Transport | None) -> Any:
    if transport is None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return None
    return sock
