"""How events are packed into event_batches rows, and unpacked: one rule for both directions.

A batch is a run of consecutive event ids (first_id..last_id, none missing) whose envelopes are
joined by b"\\n", compressed with zstd when that pays (zlib batches of earlier versions are read
back too). An envelope's id within its batch is its
position, so reading back never parses JSON. Where batches end depends only on the events and
on where the batch starts, so the same events after the same archived_through always make the
same rows (the archiver's exactly-once argument rests on that).
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import zstandard

from events.db.errors import CorruptBatchError
from events.db.schema import CODEC_PLAIN, CODEC_ZLIB, CODEC_ZSTD

log = logging.getLogger(__name__)

# A batch holds at most this many events and raw bytes: reading one event from the middle of a
# history costs decompressing one batch, at most ~1 MiB.
MAX_BATCH_EVENTS = 2000
MAX_BATCH_BYTES = 1024 * 1024
# Smaller batches are stored as they are (a frame header and a few short lines gain nothing).
COMPRESS_MIN_BYTES = 1024
# zstd level 1, measured on the archive benchmark's terminal output (MiB batches): 950 MB/s and
# 12x smaller, where zlib level 1 gave 240 MB/s and 10x; the archiver compresses every byte the
# fleet prints. A compressor object is not thread-safe (python-zstandard's docs), and the
# archiver packs on two threads: one per call, whose set-up is microseconds against a batch.
ZSTD_LEVEL = 1


@dataclass(frozen=True)
class Batch:
    first_id: int
    last_id: int
    codec: int
    data: bytes
    raw_bytes: int

    @property
    def events(self) -> int:
        return self.last_id - self.first_id + 1


def frame(envelope: bytes) -> bytes:
    """The envelope as it goes into a batch. Our publisher's JSON never holds a raw newline; an
    envelope from elsewhere that does (pretty-printed) is stored re-encoded compactly, the only
    case where stored bytes differ from Redis's."""
    if b"\n" not in envelope:
        return envelope
    log.warning("envelope with a raw newline re-encoded compactly for the archive")
    doc = json.loads(envelope)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def pack(first_id: int, envelopes: Sequence[bytes]) -> Batch:
    raw = b"\n".join(envelopes)
    if raw.count(b"\n") != len(envelopes) - 1:  # an envelope holds a newline (see frame)
        raw = b"\n".join(frame(e) for e in envelopes)
    codec, data = CODEC_PLAIN, raw
    if len(raw) >= COMPRESS_MIN_BYTES:
        packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw)
        if len(packed) < len(raw):
            codec, data = CODEC_ZSTD, packed
    return Batch(first_id, first_id + len(envelopes) - 1, codec, data, len(raw))


def cut(
    ids: Sequence[int],
    envelopes: Sequence[bytes],
    *,
    max_events: int = MAX_BATCH_EVENTS,
    max_bytes: int = MAX_BATCH_BYTES,
) -> list[Batch]:
    """Envelopes `envelopes` of ids `ids` (increasing) as batches: each as long as
    `max_events` and `max_bytes` (of joined envelopes) allow, at least one envelope, and never
    across a gap in the ids. Per batch, not per event, work in Python: this runs over every
    event the fleet publishes."""
    n = len(ids)
    if n == 0:
        return []
    # cum[i]: bytes of envelopes 0..i, each with its separator.
    cum = [c + i + 1 for i, c in enumerate(itertools.accumulate(map(len, envelopes)))]
    if ids[-1] - ids[0] == n - 1:
        runs = [(0, n)]
    else:
        starts = [0, *(i for i in range(1, n) if ids[i] != ids[i - 1] + 1), n]
        runs = list(itertools.pairwise(starts))
    out: list[Batch] = []
    for a, b in runs:
        s = a
        while s < b:
            base = cum[s - 1] if s else 0
            # The last e with joined bytes of s..e (cum[e] - base - 1) within max_bytes.
            e = bisect.bisect_right(cum, base + max_bytes + 1, s, b) - 1
            e = min(max(e, s), s + max_events - 1)
            out.append(pack(ids[s], envelopes[s : e + 1]))
            s = e + 1
    return out


def unpack(execution_id: str, first_id: int, last_id: int, codec: int, data: bytes) -> list[bytes]:
    """The envelopes of one stored batch, exactly the bytes stored."""
    if codec == CODEC_ZSTD:
        try:
            raw = zstandard.ZstdDecompressor().decompress(data)
        except zstandard.ZstdError as e:
            raise CorruptBatchError(execution_id, first_id, f"zstd: {e}") from e
    elif codec == CODEC_ZLIB:
        try:
            raw = zlib.decompress(data)
        except zlib.error as e:
            raise CorruptBatchError(execution_id, first_id, f"zlib: {e}") from e
    elif codec == CODEC_PLAIN:
        raw = data
    else:
        raise CorruptBatchError(execution_id, first_id, f"unknown codec {codec}")
    lines = raw.split(b"\n")
    if len(lines) != last_id - first_id + 1:
        raise CorruptBatchError(
            execution_id, first_id, f"{len(lines)} envelopes for ids {first_id}..{last_id}"
        )
    return lines
