"""Turn raw bytes from a process's stdout and stderr into `execution_output` chunks.

A chunk goes out at most `flush_interval_ms` after its first byte arrived, or as soon as
`max_chunk_bytes` are waiting, whichever comes first; and at once when it is sparse output
(nothing flushed within the interval before its first byte) while nothing of the execution is in
flight (the caller passes `idle`: handed to the publisher and not yet confirmed by Redis). That is
TCP's Nagle rule / Linux autocorking: a line after a quiet period costs one event either way, so
it may as well go out now; a burst, or output while earlier output is in flight, coalesces up to
the interval as before, so a chatty command costs no more events than with a fixed window (at
most one early chunk per interval). Chunks never split a UTF-8 character
(each stream has its own incremental decoder; bytes that are not UTF-8 become U+FFFD), secrets
are masked before anything leaves (also one split between stdout and stderr), and the relative
order of stdout and stderr is kept: pending output is a list of segments, one per run of the
same stream.

The coalescer does no I/O and keeps no clock: the caller passes `now` and `idle` and asks
`deadline()`. Only text the maskers released is pending, so a possible secret's prefix they hold
back is never flushed early.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from typing import Literal

from events.masking import CrossStreamMasker, Masker, StreamMasker
from events.wire import utf8_len

Stream = Literal["stdout", "stderr"]
Emit = Callable[[Stream, str], None]


def split_utf8(text: str, max_bytes: int) -> list[str]:
    """Split text into pieces of at most max_bytes UTF-8 bytes, on character boundaries."""
    if text.isascii():
        return [text[i : i + max_bytes] for i in range(0, len(text), max_bytes)]
    data = text.encode("utf-8")
    out: list[str] = []
    start = 0
    while start < len(data):
        end = min(start + max_bytes, len(data))
        # Back off to the first byte of a character (continuation bytes are 10xxxxxx).
        while end < len(data) and (data[end] & 0xC0) == 0x80:
            end -= 1
        out.append(data[start:end].decode("utf-8"))
        start = end
    return out


class OutputCoalescer:
    def __init__(
        self,
        emit: Emit,
        *,
        flush_interval_ms: int = 20,
        max_chunk_bytes: int = 64 * 1024,
        masker: Masker | None = None,
    ) -> None:
        if max_chunk_bytes < 4:
            raise ValueError("max_chunk_bytes must hold at least one UTF-8 character")
        self._emit = emit
        self._interval_s = flush_interval_ms / 1000.0
        self._max = max_chunk_bytes
        m = masker or Masker(())
        self._decoders = {
            s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in ("stdout", "stderr")
        }
        self._maskers: dict[str, StreamMasker] = {"stdout": m.stream(), "stderr": m.stream()}
        # A secret split between the two streams, in write order, is masked first; each
        # stream's own masker then sees its text as before.
        self._cross = CrossStreamMasker(m) if m else None
        self._segments: list[tuple[Stream, list[str]]] = []
        self._pending_bytes = 0
        self._first_at: float | None = None
        # The pending chunk began after a quiet interval: it may go out at once when idle.
        self._sparse = False
        self._last_flush_at: float | None = None
        self._now = 0.0  # the latest `now` passed in: when an explicit flush() happened
        self.bytes_in = 0

    def feed(self, stream: Stream, data: bytes, now: float) -> None:
        self.bytes_in += len(data)
        self._now = now
        text = self._decoders[stream].decode(data)
        if self._cross is None:
            self._append(stream, self._maskers[stream].feed(text), now)
        else:
            self._mask_each(self._cross.feed(stream, text), now)
        if self._pending_bytes >= self._max:
            self.flush(now)

    def _mask_each(self, pieces: list[tuple[str, str]], now: float) -> None:
        for s, text in pieces:
            st: Stream = "stderr" if s == "stderr" else "stdout"
            self._append(st, self._maskers[st].feed(text), now)

    def _append(self, stream: Stream, text: str, now: float) -> None:
        if not text:
            return
        if self._segments and self._segments[-1][0] == stream:
            self._segments[-1][1].append(text)
        else:
            self._segments.append((stream, [text]))
        self._pending_bytes += utf8_len(text)
        if self._first_at is None:
            self._first_at = now
            self._sparse = self._quiet(now)

    @property
    def interval_s(self) -> float:
        return self._interval_s

    def _quiet(self, now: float) -> bool:
        last = self._last_flush_at
        return last is None or now - last >= self._interval_s

    def at_once(self, now: float, idle: bool) -> bool:
        """Whether text arriving at `now` would go out at once: the executor then reads a
        trickling stream instead of holding it (worker/pipes.py)."""
        if not idle:
            return False
        return self._sparse if self._first_at is not None else self._quiet(now)

    def deadline(self, idle: bool = False) -> float | None:
        """When the pending output must go out (same clock as `now`), or None. `idle`: nothing
        of the execution is in flight, so sparse output goes out at once."""
        if self._first_at is None:
            return None
        if idle and self._sparse:
            return self._first_at
        return self._first_at + self._interval_s

    def due(self, now: float, idle: bool = False) -> bool:
        d = self.deadline(idle)
        return d is not None and now >= d

    def flush(self, now: float | None = None) -> None:
        """Emit what is pending. `now` (default: the latest time fed) starts the interval in
        which later output counts as a burst."""
        segments, self._segments = self._segments, []
        self._pending_bytes = 0
        self._first_at = None
        if segments:
            self._last_flush_at = self._now if now is None else now
        for stream, parts in segments:
            text = "".join(parts)
            if utf8_len(text) <= self._max:
                self._emit(stream, text)
            else:
                for piece in split_utf8(text, self._max):
                    self._emit(stream, piece)

    def close(self, now: float) -> None:
        """End of both streams: incomplete characters become U+FFFD, held tails go out."""
        streams: tuple[Stream, Stream] = ("stdout", "stderr")
        for s in streams:
            tail = self._decoders[s].decode(b"", final=True)
            if self._cross is None:
                self._append(s, self._maskers[s].feed(tail), now)
            else:
                self._mask_each(self._cross.feed(s, tail), now)
        if self._cross is not None:
            self._mask_each(self._cross.final(), now)
        for s in streams:
            self._append(s, self._maskers[s].final(), now)
        self.flush(now)
