"""The command's stdout and stderr while the executor's pump reads them."""

from __future__ import annotations

import selectors
from collections.abc import Callable

from events.coalescer import Stream

# A stream whose last read brought less than this trickles: when it alone becomes readable it is
# held (left unread, its fd out of the poll set) until its chunk is due, so a command printing a
# line per ms costs one wake-up per chunk instead of one per line. A stream that reads more is
# drained at every wake-up, so a fast command never waits on us.
TRICKLE_BYTES = 16 * 1024


class Pipes:
    """The command's stdout and stderr while the pump reads them: which are still open, and
    the holding of a trickling one (see TRICKLE_BYTES and Executor._pump)."""

    def __init__(
        self,
        sel: selectors.BaseSelector,
        streams: dict[int, Stream],
        read: Callable[[int, Stream, float], int | None],
        interval_s: float,
    ) -> None:
        self._sel = sel
        self._streams = streams
        self._read = read
        self._interval_s = interval_s
        self.open = set(streams)
        self.held: dict[int, float] = {}  # fd -> when it was seen readable, left unread
        self._trickles = dict.fromkeys(streams, False)

    def hold_due(self) -> float | None:
        """When the held stream must be read, or None."""
        return min(self.held.values()) + self._interval_s if self.held else None

    def take(self, ready: list[int], seen: float, may_hold: bool) -> None:
        """Streams the poll found readable at `seen`: hold the one trickling stream, or read."""
        if not ready:
            return
        fd = ready[0]
        if may_hold and len(ready) == 1 and not self.held and self._trickles[fd]:
            self.held[fd] = seen
            self._sel.unregister(fd)
            return
        self.read_held()  # what was held came before what is ready now
        for fd in ready:
            self._read_one(fd, seen)

    def read_held(self) -> None:
        for fd, seen in sorted(self.held.items(), key=lambda kv: kv[1]):
            self._read_one(fd, seen)  # while still held: its fd is out of the poll set
            del self.held[fd]
            if fd in self.open:
                self._sel.register(fd, selectors.EVENT_READ)

    def _read_one(self, fd: int, seen: float) -> None:
        n = self._read(fd, self._streams[fd], seen)
        if n is None:
            self.open.discard(fd)
            if fd not in self.held:
                self._sel.unregister(fd)
        elif n:
            self._trickles[fd] = n < TRICKLE_BYTES
