"""The slow-client rule of one stream (SSE response or WebSocket), shared by both writers.

A client is dropped (and resumes by id) when one of its sends has waited `stall_limit_s`
(its socket takes nothing), or when, while a send waits, more than `stream_buffer_bytes` are
waiting for it: the live events it has not taken (queued in its inbox, or dropped from it since
it overflowed, to be read again from the history), the write in progress, the transport's
buffer and the kernel's send queue (`api.limits.queued_bytes`). The first rule alone let a
client that reads nothing hold its backlog in the kernel's autotuned buffers for the whole
stall limit; the second drops it after a bounded number of bytes, however fast they come.

One check every `CHECK_S` per stream, rather than a timer around every send, which would cost
a timer per event per client. Only a send that is really waiting is seen: uvicorn's send
returns without suspending while the socket takes the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Literal, Protocol

from api.limits import queued_bytes
from api.relay import Relay

CHECK_S = 0.5
Reason = Literal["stalled", "buffer"]


class Behind(Protocol):
    @property
    def behind_bytes(self) -> int: ...


class StreamGuard:
    def __init__(
        self,
        relay: Relay,
        transport: asyncio.Transport | None,
        feeds: Iterable[Behind] | Callable[[], Iterable[Behind]],
    ) -> None:
        self._stall_s = relay.options.stall_limit_s
        self._budget = relay.settings.stream_buffer_bytes
        self._transport = transport
        self._feeds = feeds
        self._since: float | None = None
        self._size = 0

    @contextlib.contextmanager
    def sending(self, size_bytes: int) -> Iterator[None]:
        """Around one send of `size_bytes`."""
        self._since = asyncio.get_running_loop().time()
        self._size = size_bytes
        try:
            yield
        finally:
            self._since = None
            self._size = 0

    def waiting_bytes(self) -> int:
        feeds = self._feeds() if callable(self._feeds) else self._feeds
        behind = sum(f.behind_bytes for f in feeds)
        return behind + self._size + queued_bytes(self._transport)

    async def watch(self) -> Reason:
        """Returns why the client must be dropped, once it must."""
        loop = asyncio.get_running_loop()
        check_s = max(0.05, min(CHECK_S, self._stall_s / 4))
        # Streams opened together would check together, and close together: spread them.
        await asyncio.sleep(random.uniform(0, check_s))
        while True:
            await asyncio.sleep(check_s)
            since = self._since
            if since is None:
                continue
            if loop.time() - since >= self._stall_s:
                return "stalled"
            if self.waiting_bytes() > self._budget:
                return "buffer"
