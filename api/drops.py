"""Stream clients the relay closes: counted and logged without a cost per client.

A slow-client rule can close hundreds of clients in the same instant (a flood that none of
them reads fills every buffer at once). Logging a line and INCRing the fleet counter in Redis
for each one then stalled the relay's loop for tens of milliseconds, felt by every other
client (measured by the hostile-load fault test). So the first close of each second is logged
in full, the others are summed into one line, and the counter is added to Redis once per
second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis

from api.limits import REFUSALS
from api.metrics import DROPPED_STAT
from api.store import Store

log = logging.getLogger("api.relay")

FLUSH_S = 1.0


class DropLedger:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending = 0  # closes not yet added to the fleet counter in Redis
        self._unlogged = 0  # closes not logged one by one since the last flush
        self._logged_this_second = False
        self._flush: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Closes not yet added to the fleet counter in Redis."""
        return self._pending

    def note(self, kind: str, detail: str, reason: str) -> None:
        """A stream client closed: `reason` is stalled, buffer or revoked (its token)."""
        REFUSALS.drop(reason)
        if reason == "revoked":
            log.info("closing a %s client whose token is no longer valid: %s", kind, detail)
            return
        if self._logged_this_second:
            self._unlogged += 1
        else:
            self._logged_this_second = True
            log.warning("closing a slow %s client (%s): %s", kind, reason, detail)
        self._pending += 1
        if self._flush is None or self._flush.done():
            self._flush = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(FLUSH_S)
        self.flush_log()
        count = self._pending
        if count:
            with contextlib.suppress(redis.RedisError, OSError):
                await self._store.incr_stat(DROPPED_STAT, count)
                self._pending -= count  # only once Redis has them: /metrics adds the rest

    def flush_log(self) -> None:
        if self._unlogged:
            log.warning("closed %d more slow clients in the last second", self._unlogged)
        self._unlogged = 0
        self._logged_this_second = False

    async def close(self) -> None:
        if self._flush is not None and not self._flush.done():
            self._flush.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush
        self.flush_log()
        count = self._pending
        if count:
            with contextlib.suppress(redis.RedisError, OSError, TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._store.incr_stat(DROPPED_STAT, count)
                    self._pending -= count
