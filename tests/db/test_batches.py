"""Packing envelopes into batch rows and back (events.db.batches): boundaries, codecs, gaps."""

from __future__ import annotations

import json
import random
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.db.batches import cut, frame, pack, unpack
from events.db.errors import CorruptBatchError
from events.db.schema import CODEC_PLAIN, CODEC_ZLIB, CODEC_ZSTD


def envelope(i: int, text: str = "x") -> bytes:
    doc = {"event": "execution_output", "id": i, "executionId": "ex_1", "payload": {"output": text}}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def test_a_batch_gives_back_exactly_its_bytes() -> None:
    rng = random.Random(3)
    envs = [envelope(i, 'é\\n"' * rng.randint(0, 600)) for i in range(1, 200)]
    b = pack(1, envs)
    assert b.codec == CODEC_ZSTD and len(b.data) < b.raw_bytes
    assert unpack("ex_1", b.first_id, b.last_id, b.codec, b.data) == envs


def test_zlib_batches_of_earlier_versions_read_back() -> None:
    envs = [envelope(i, "line\n" * 40) for i in range(1, 50)]
    data = zlib.compress(b"\n".join(envs), 1)
    assert unpack("ex_1", 1, 49, CODEC_ZLIB, data) == envs


def test_small_batches_are_stored_plain() -> None:
    b = pack(7, [envelope(7)])
    assert b.codec == CODEC_PLAIN and (b.first_id, b.last_id) == (7, 7)
    assert unpack("ex_1", 7, 7, b.codec, b.data) == [envelope(7)]


def test_boundaries_by_count_bytes_and_gaps() -> None:
    ids = [*range(1, 26), *range(30, 41)]
    envs = [envelope(i, "y" * 100) for i in ids]
    batches = cut(ids, envs, max_events=10, max_bytes=10_000)
    assert [(b.first_id, b.last_id) for b in batches] == [
        (1, 10),
        (11, 20),
        (21, 25),  # the gap 26..29 ends a batch
        (30, 39),
        (40, 40),
    ]
    # Three envelopes and their two separators fit; a fourth does not.
    size = len(envs[0])
    by_bytes = cut(ids[:10], envs[:10], max_events=100, max_bytes=3 * size + 2)
    assert [b.events for b in by_bytes] == [3, 3, 3, 1]
    assert all(b.raw_bytes <= 3 * size + 2 for b in by_bytes)
    assert [b.events for b in cut(ids[:10], envs[:10], max_bytes=3 * size + 1)] == [2] * 5
    # Boundaries depend only on the events and the start: the same input, the same rows.
    assert cut(ids, envs, max_events=10, max_bytes=10_000) == batches
    for b in batches:
        got = unpack("ex_1", b.first_id, b.last_id, b.codec, b.data)
        assert got == envs[ids.index(b.first_id) : ids.index(b.last_id) + 1]


def test_one_envelope_larger_than_the_byte_limit_is_a_batch_alone() -> None:
    big = [envelope(1, "z" * 5000), envelope(2), envelope(3)]
    assert [b.events for b in cut([1, 2, 3], big, max_bytes=1000)] == [1, 2]
    assert cut([], []) == []


def test_a_corrupt_batch_is_named() -> None:
    b = pack(1, [envelope(1), envelope(2)])
    with pytest.raises(CorruptBatchError, match="ex_1/1"):
        unpack("ex_1", 1, 3, b.codec, b.data)
    with pytest.raises(CorruptBatchError, match="zlib"):
        unpack("ex_1", 1, 2, CODEC_ZLIB, b"not zlib")
    with pytest.raises(CorruptBatchError, match="zstd"):
        unpack("ex_1", 1, 2, CODEC_ZSTD, b"not zstd")


def test_a_newline_inside_an_envelope_is_compacted_not_split() -> None:
    pretty = json.dumps(json.loads(envelope(1, "a\nb")), indent=2).encode()
    framed = frame(pretty)
    assert b"\n" not in framed and json.loads(framed) == json.loads(pretty)
    assert frame(envelope(2)) == envelope(2)
    b = pack(1, [envelope(1), pretty, envelope(3)])
    assert unpack("ex_1", 1, 3, b.codec, b.data) == [envelope(1), framed, envelope(3)]


@given(
    st.lists(st.tuples(st.integers(1, 3), st.integers(0, 300)), max_size=200),
    st.integers(1, 12),
    st.integers(1, 2000),
)
def test_cut_keeps_every_envelope_in_order_in_the_longest_batches_allowed(
    steps: list[tuple[int, int]], max_events: int, max_bytes: int
) -> None:
    ids, envs, last = [], [], 0
    for gap, size in steps:
        last += gap
        ids.append(last)
        envs.append(b"x" * size + str(last).encode())
    batches = cut(ids, envs, max_events=max_events, max_bytes=max_bytes)
    got: list[bytes] = []
    for k, b in enumerate(batches):
        lines = unpack("ex_1", b.first_id, b.last_id, b.codec, b.data)
        i = ids.index(b.first_id)
        assert ids[i : i + b.events] == list(range(b.first_id, b.last_id + 1))  # no gap inside
        assert b.events <= max_events
        assert b.events == 1 or b.raw_bytes <= max_bytes
        got += lines
        j = i + b.events
        if k + 1 < len(batches) and ids[j] == b.last_id + 1:
            # The next envelope was left out only because a limit said so.
            assert b.events == max_events or b.raw_bytes + 1 + len(envs[j]) > max_bytes
    assert got == envs
