"""Turn raw bytes from a process's stdout and stderr into `execution_output` chunks.

A chunk goes out at most `flush_interval_ms` after its first byte arrived, or as soon as
`max_chunk_bytes` are waiting, whichever comes first. Chunks never split a UTF-8 character
(each stream has its own incremental decoder; bytes that are not UTF-8 become U+FFFD), secrets
are masked before anything leaves, and the relative order of stdout and stderr is kept: pending
output is a list of segments, one per run of the same stream.

The coalescer does no I/O and keeps no clock: the caller passes `now` and asks `deadline()`.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from typing import Literal

from events.masking import Masker, StreamMasker

Stream = Literal["stdout", "stderr"]
Emit = Callable[[Stream, str], None]


def utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


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
        self._segments: list[tuple[Stream, list[str]]] = []
        self._pending_bytes = 0
        self._first_at: float | None = None
        self.bytes_in = 0

    def feed(self, stream: Stream, data: bytes, now: float) -> None:
        self.bytes_in += len(data)
        text = self._maskers[stream].feed(self._decoders[stream].decode(data))
        self._append(stream, text, now)
        if self._pending_bytes >= self._max:
            self.flush()

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

    @property
    def interval_s(self) -> float:
        return self._interval_s

    def deadline(self) -> float | None:
        """When the pending output must go out (same clock as `now`), or None."""
        return None if self._first_at is None else self._first_at + self._interval_s

    def due(self, now: float) -> bool:
        d = self.deadline()
        return d is not None and now >= d

    def flush(self) -> None:
        segments, self._segments = self._segments, []
        self._pending_bytes = 0
        self._first_at = None
        for stream, parts in segments:
            text = "".join(parts)
            if utf8_len(text) <= self._max:
                self._emit(stream, text)
            else:
                for piece in split_utf8(text, self._max):
                    self._emit(stream, piece)

    def close(self, now: float) -> None:
        """End of both streams: incomplete characters become U+FFFD, held tails go out."""
        for stream in ("stdout", "stderr"):
            s: Stream = "stdout" if stream == "stdout" else "stderr"
            tail = self._decoders[s].decode(b"", final=True)
            masker = self._maskers[s]
            self._append(s, masker.feed(tail) + masker.final(), now)
        self.flush()
