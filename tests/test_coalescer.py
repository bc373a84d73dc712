"""Property tests of the output coalescer and of secret masking.

Bytes of stdout and stderr, split at random points into reads and interleaved at random, with a
random clock and random explicit flushes, go through `OutputCoalescer`; a driver flushes it at
its `deadline()` as the executor does. What comes out must be each stream's input decoded as one
piece (`errors="replace"`), in chunks of at most `max_chunk_bytes` UTF-8 bytes, never empty,
in the order the text became available, and never later than `flush_interval_ms` after it did.
"""

from __future__ import annotations

import codecs
import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from events.coalescer import OutputCoalescer, Stream, split_utf8
from events.masking import MASK, Masker
from events.wire import utf8_len

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EPS_S = 1e-9
STREAMS: tuple[Stream, Stream] = ("stdout", "stderr")

# Byte material that exercises the decoder: text of any script, raw bytes, and the classic
# broken sequences (truncated multi-byte characters, a surrogate, an overlong form, > U+10FFFF).
BROKEN = [b"\xe2\x82", b"\xf0\x9f\x98", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf"]
piece_bytes = st.one_of(
    st.text(max_size=12).map(str.encode),
    st.binary(max_size=8),
    st.sampled_from(BROKEN),
)
stream_bytes = st.lists(piece_bytes, max_size=12).map(b"".join)
max_chunk = st.one_of(st.integers(min_value=4, max_value=64), st.just(65536))
# Clock steps around the 20 ms flush interval, exact boundaries included.
clock_step = st.one_of(
    st.sampled_from([0.0, 0.001, 0.0199, 0.02, 0.0201, 0.05]),
    st.floats(min_value=0.0, max_value=0.06, allow_nan=False),
)

# The publisher's "nothing in flight" at each step (cycled; empty: never idle).
idles = st.lists(st.booleans(), max_size=6)


@dataclass(frozen=True)
class Feed:
    stream: Stream
    data: bytes
    dt_s: float


@dataclass(frozen=True)
class Flush:
    pass


Op = Feed | Flush


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


@st.composite
def reads(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """`data` split at random points (empty reads included)."""
    cuts = draw(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=12))
    return split_at(data, cuts)


@st.composite
def interleave(draw: st.DrawFn, out_reads: list[bytes], err_reads: list[bytes]) -> list[Op]:
    """Both streams' reads in a random interleaving, each stream in its own order, with clock
    steps and explicit flushes in between."""
    ops: list[Op] = []
    i = j = 0
    while i < len(out_reads) or j < len(err_reads):
        take_out = j >= len(err_reads) or (i < len(out_reads) and draw(st.booleans()))
        if take_out:
            ops.append(Feed("stdout", out_reads[i], draw(clock_step)))
            i += 1
        else:
            ops.append(Feed("stderr", err_reads[j], draw(clock_step)))
            j += 1
        if draw(st.integers(min_value=0, max_value=6)) == 0:
            ops.append(Flush())
    return ops


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[bytes, bytes, list[Op]]:
    out = draw(stream_bytes)
    err = draw(stream_bytes)
    ops = draw(interleave(draw(reads(out)), draw(reads(err))))
    return out, err, ops


@dataclass
class Chunk:
    stream: Stream
    text: str
    at_s: float


@dataclass
class Run:
    chunks: list[Chunk] = field(default_factory=list)
    clock_s: float = 0.0


def drive(
    ops: Sequence[Op],
    *,
    max_chunk_bytes: int = 65536,
    flush_interval_ms: int = 20,
    masker: Masker | None = None,
    idle: Sequence[bool] = (),
) -> Run:
    """Feed the ops as the executor does: whenever the clock passes `deadline()`, flush at the
    deadline; at the end, `close()`. `idle`: the publisher's "nothing in flight" before each op
    in turn (cycled; none: never idle, the fixed window)."""
    run = Run()
    idles = itertools.cycle(idle or (False,))

    def emit(stream: Stream, text: str) -> None:
        run.chunks.append(Chunk(stream, text, run.clock_s))

    c = OutputCoalescer(
        emit, flush_interval_ms=flush_interval_ms, max_chunk_bytes=max_chunk_bytes, masker=masker
    )
    for op in ops:
        is_idle = next(idles)
        if isinstance(op, Flush):
            c.flush(run.clock_s)
            continue
        now = run.clock_s + op.dt_s
        deadline = c.deadline(is_idle)
        if deadline is not None and deadline <= now:
            assert c.due(deadline, is_idle) and not c.due(deadline - 0.001, is_idle)
            # Past already when the publisher became idle since: flushed now, as the executor.
            run.clock_s = max(run.clock_s, deadline)
            c.flush(run.clock_s)
            assert c.deadline() is None
        run.clock_s = now
        c.feed(op.stream, op.data, now)
    c.close(run.clock_s)
    assert c.deadline() is None, "close() must leave nothing pending"
    return run


def available(ops: Sequence[Op]) -> list[Chunk]:
    """Reference: when each piece of text became decodable, by a plain incremental decoder per
    stream (and what the final decode of each stream adds at the end)."""
    decoders = {s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in STREAMS}
    clock_s = 0.0
    out: list[Chunk] = []
    for op in ops:
        if isinstance(op, Feed):
            clock_s += op.dt_s
            out.append(Chunk(op.stream, decoders[op.stream].decode(op.data), clock_s))
    for s in STREAMS:
        out.append(Chunk(s, decoders[s].decode(b"", final=True), clock_s))
    return [c for c in out if c.text]


def per_stream(chunks: Iterable[Chunk], stream: Stream) -> str:
    return "".join(c.text for c in chunks if c.stream == stream)


def merged(chunks: Iterable[Chunk]) -> list[tuple[Stream, str]]:
    """Adjacent chunks of the same stream joined: the order of stdout vs stderr text."""
    out: list[tuple[Stream, str]] = []
    for c in chunks:
        if out and out[-1][0] == c.stream:
            out[-1] = (c.stream, out[-1][1] + c.text)
        else:
            out.append((c.stream, c.text))
    return out


def chars(chunks: Iterable[Chunk]) -> list[tuple[Stream, str, float]]:
    return [(c.stream, ch, c.at_s) for c in chunks for ch in c.text]


def check_chunk_shape(run: Run, max_chunk_bytes: int) -> None:
    for c in run.chunks:
        assert c.text, "empty chunk"
        # Encodes strictly: no lone surrogate, i.e. no character split in two.
        assert len(c.text.encode("utf-8")) <= max_chunk_bytes


# -- premise -------------------------------------------------------------------------------


@PROPS
@given(data=stream_bytes, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=20))
@example(data=b"\xe2\x82\xac\xe2\x82", cuts=[1, 4])
@example(data=b"a\xf0\x9f\x98b", cuts=[2])
def test_incremental_decoding_equals_one_shot(data: bytes, cuts: list[int]) -> None:
    """What the coalescer relies on: decoding reads one by one with errors="replace" gives
    exactly what decoding the whole stream at once gives (same U+FFFD for the same bytes)."""
    dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces = split_at(data, [c for c in cuts if c <= len(data)])
    text = "".join(dec.decode(p) for p in pieces) + dec.decode(b"", final=True)
    assert text == data.decode("utf-8", errors="replace")


# -- the coalescer -------------------------------------------------------------------------


@PROPS
@given(scenario=scenarios(), max_chunk_bytes=max_chunk, idle=idles)
def test_streams_come_out_decoded_whole_in_bounded_chunks(
    scenario: tuple[bytes, bytes, list[Op]], max_chunk_bytes: int, idle: list[bool]
) -> None:
    out, err, ops = scenario
    run = drive(ops, max_chunk_bytes=max_chunk_bytes, idle=idle)
    assert per_stream(run.chunks, "stdout") == out.decode("utf-8", errors="replace")
    assert per_stream(run.chunks, "stderr") == err.decode("utf-8", errors="replace")
    check_chunk_shape(run, max_chunk_bytes)


@PROPS
@given(scenario=scenarios(), max_chunk_bytes=max_chunk, idle=idles)
def test_stdout_stderr_order_and_latency(
    scenario: tuple[bytes, bytes, list[Op]], max_chunk_bytes: int, idle: list[bool]
) -> None:
    """Text comes out in the order it became available across both streams, never before and
    never more than the flush interval after it became available."""
    _, _, ops = scenario
    run = drive(ops, max_chunk_bytes=max_chunk_bytes, idle=idle)
    ref = available(ops)
    assert merged(run.chunks) == merged(ref)
    for (s1, ch1, emitted_s), (s2, ch2, avail_s) in zip(chars(run.chunks), chars(ref), strict=True):
        assert (s1, ch1) == (s2, ch2)
        assert avail_s - EPS_S <= emitted_s <= avail_s + 0.020 + EPS_S


@PROPS
@given(
    feeds=st.lists(
        st.tuples(
            st.sampled_from(STREAMS),
            st.text(alphabet="ab\n", min_size=1, max_size=10),
            clock_step,
        ),
        max_size=30,
    ),
    max_chunk_bytes=max_chunk,
    idle=idles,
)
def test_ascii_reads_keep_their_interleaving(
    feeds: list[tuple[Stream, str, float]], max_chunk_bytes: int, idle: list[bool]
) -> None:
    """With whole characters in every read, the output order is exactly the read order."""
    ops = [Feed(s, t.encode(), dt) for s, t, dt in feeds]
    run = drive(ops, max_chunk_bytes=max_chunk_bytes, idle=idle)
    assert merged(run.chunks) == merged(Chunk(s, t, 0.0) for s, t, _ in feeds)


@PROPS
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["feed", "partial", "flush", "tick"]), clock_step), max_size=30
    )
)
def test_deadline_is_first_unflushed_text_plus_interval(
    steps: list[tuple[Literal["feed", "partial", "flush", "tick"], float]],
) -> None:
    emitted: list[str] = []
    c = OutputCoalescer(lambda _s, t: emitted.append(t), flush_interval_ms=20)
    now = 0.0
    first: float | None = None
    for kind, dt in steps:
        now += dt
        if kind == "feed":
            c.feed("stdout", b"x", now)
            first = now if first is None else first
        elif kind == "partial":
            # Half a character is not text yet: nothing to flush, nothing due.
            c.feed("stderr", b"\xc3", now)
            c.feed("stderr", b"\xa9", now)  # ...completed: now it is pending text
            first = now if first is None else first
        elif kind == "flush":
            c.flush()
            first = None
        expected = None if first is None else first + 0.020
        assert c.deadline() == expected
        if expected is not None:
            assert c.due(expected) and c.due(expected + 1) and not c.due(expected - 0.0005)
        else:
            assert not c.due(now + 1000)


def test_partial_character_is_not_pending() -> None:
    emitted: list[tuple[str, str]] = []
    c = OutputCoalescer(lambda s, t: emitted.append((s, t)))
    c.feed("stdout", b"\xe2\x82", 1.0)
    assert c.deadline() is None
    c.flush()
    assert emitted == []
    c.feed("stdout", b"\xac", 2.0)
    assert c.deadline() == pytest.approx(2.02)
    c.close(2.0)
    assert emitted == [("stdout", "€")]


def test_flush_at_max_chunk_bytes_without_waiting() -> None:
    emitted: list[str] = []
    c = OutputCoalescer(lambda _s, t: emitted.append(t), max_chunk_bytes=8)
    c.feed("stdout", b"1234567", 0.0)
    assert emitted == []
    c.feed("stdout", b"8", 0.0)
    assert emitted == ["12345678"]
    assert c.deadline() is None


def test_truncated_character_at_close_becomes_replacement() -> None:
    emitted: list[tuple[str, str]] = []
    c = OutputCoalescer(lambda s, t: emitted.append((s, t)))
    c.feed("stderr", b"ok \xf0\x9f\x98", 0.0)
    c.close(0.0)
    assert emitted == [("stderr", "ok \ufffd")]


def test_max_chunk_bytes_below_one_character_is_refused() -> None:
    with pytest.raises(ValueError):
        OutputCoalescer(lambda _s, _t: None, max_chunk_bytes=3)


@pytest.mark.parametrize("max_chunk_bytes", [65536, 4, 7])
def test_large_mixed_output_at_the_real_chunk_size(max_chunk_bytes: int) -> None:
    """Half a megabyte of multi-byte text and garbage in pipe-sized reads."""
    rnd = random.Random(max_chunk_bytes)
    alphabet = "aé€\U0001f600\n"
    data = b"".join(
        rnd.choice([*(ch.encode() for ch in alphabet), b"\xff", b"\xe2\x82"])
        for _ in range(120_000 if max_chunk_bytes == 65536 else 20_000)
    )
    out_reads = split_at(data, rnd.sample(range(len(data)), 40))
    ops: list[Op] = [Feed("stdout", r, 0.001) for r in out_reads]
    run = drive(ops, max_chunk_bytes=max_chunk_bytes)
    assert per_stream(run.chunks, "stdout") == data.decode("utf-8", errors="replace")
    check_chunk_shape(run, max_chunk_bytes)
    if max_chunk_bytes == 65536:
        assert any(utf8_len(c.text) > 65536 - 4 for c in run.chunks), "never hit the cap"


@PROPS
@given(text=st.text(), max_bytes=st.integers(min_value=4, max_value=40))
def test_split_utf8(text: str, max_bytes: int) -> None:
    pieces = split_utf8(text, max_bytes)
    assert "".join(pieces) == text
    assert all(0 < len(p.encode()) <= max_bytes for p in pieces)
    assert all(utf8_len(p) == len(p.encode()) for p in pieces)


# -- secrets -------------------------------------------------------------------------------

# Secrets are drawn from letters the filler never uses (multi-byte ones included, so that a
# secret can also be split inside a character), and every embedded secret is followed by
# filler: each maximal run of secret letters is then exactly one secret, and the expected
# output is unambiguous whatever secrets are prefixes of others.
SECRET_ALPHABET = "QWXZß€"
FILLER_ALPHABET = "abc \n=é"
secret_values = st.text(alphabet=SECRET_ALPHABET, min_size=1, max_size=12)
filler = st.text(alphabet=FILLER_ALPHABET, min_size=1, max_size=10)


@st.composite
def secret_streams(draw: st.DrawFn, secrets: list[str]) -> tuple[bytes, str]:
    """(stream bytes, the same text with every embedded secret replaced by ***)."""
    raw: list[str] = [draw(st.text(alphabet=FILLER_ALPHABET, max_size=10))]
    masked: list[str] = list(raw)
    for _ in range(draw(st.integers(min_value=0, max_value=6))):
        s = draw(st.sampled_from(secrets))
        tail = draw(filler)
        raw += [s, tail]
        masked += [MASK, tail]
    return "".join(raw).encode(), "".join(masked)


@st.composite
def secret_scenarios(draw: st.DrawFn) -> tuple[list[str], bytes, str, bytes, str, list[Op]]:
    secrets = draw(st.lists(secret_values, min_size=1, max_size=4, unique=True))
    out, out_masked = draw(secret_streams(secrets))
    err, err_masked = draw(secret_streams(secrets))
    ops = draw(interleave(draw(reads(out)), draw(reads(err))))
    return secrets, out, out_masked, err, err_masked, ops


@PROPS
@given(scenario=secret_scenarios(), max_chunk_bytes=max_chunk, idle=idles)
@example(
    scenario=(
        ["QW", "QWX"],
        b"aQWXb",
        "a***b",
        b"",
        "",
        [Feed("stdout", b"aQW", 0), Flush(), Feed("stdout", b"Xb", 0.05)],
    ),
    max_chunk_bytes=65536,
    idle=[],
)
def test_secrets_are_masked_even_when_split_across_reads(
    scenario: tuple[list[str], bytes, str, bytes, str, list[Op]],
    max_chunk_bytes: int,
    idle: list[bool],
) -> None:
    secrets, _, out_masked, _, err_masked, ops = scenario
    run = drive(ops, max_chunk_bytes=max_chunk_bytes, masker=Masker(secrets), idle=idle)
    if not crosses_streams(ops, secrets):
        assert per_stream(run.chunks, "stdout") == out_masked
        assert per_stream(run.chunks, "stderr") == err_masked
    # else a secret made of both streams' text, in write order, was masked first: the
    # per-stream text differs, and nothing secret is left anywhere (below).
    for stream in STREAMS:
        assert all(s not in per_stream(run.chunks, stream) for s in secrets)
    check_chunk_shape(run, max_chunk_bytes)
    everything = "".join(c.text for c in run.chunks)
    for s in secrets:
        assert s not in everything
        # Not even one chunk shows one whole: the masking happens before chunking.
        assert all(s not in c.text for c in run.chunks)


def crosses_streams(ops: Sequence[Op], secrets: Sequence[str]) -> bool:
    """Whether a secret occurs in the written order of both streams' text (as decoded) with
    characters of both streams: then it is masked across them."""
    written = [(c.stream, ch) for c in available(ops) for ch in c.text]
    text = "".join(ch for _, ch in written)
    for s in secrets:
        start = text.find(s)
        while start >= 0:
            if len({stream for stream, _ in written[start : start + len(s)]}) > 1:
                return True
            start = text.find(s, start + 1)
    return False


@st.composite
def split_secret_scenarios(draw: st.DrawFn) -> tuple[str, str, list[Op]]:
    """One secret split at a random point between the two streams, as a process writes it
    (`printf abc; printf 123 >&2`): the first part on one stream, the rest on the other, each
    part in random reads, with filler around, in that order."""
    secret = draw(st.text(alphabet=SECRET_ALPHABET, min_size=2, max_size=16))
    k = draw(st.integers(min_value=1, max_value=len(secret) - 1))
    first: Stream = draw(st.sampled_from(STREAMS))
    second: Stream = "stderr" if first == "stdout" else "stdout"
    before = draw(st.text(alphabet=FILLER_ALPHABET, max_size=8)) + secret[:k]
    after = secret[k:] + draw(st.text(alphabet=FILLER_ALPHABET, max_size=8))
    ops: list[Op] = []
    for stream, text in ((first, before), (second, after)):
        for piece in draw(reads(text.encode())):
            ops.append(Feed(stream, piece, draw(clock_step)))
    return secret, before + after, ops


@PROPS
@given(scenario=split_secret_scenarios(), max_chunk_bytes=max_chunk, idle=idles)
@example(
    scenario=(
        "abc123secretXYZ",
        "abc123secretXYZ",
        [Feed("stdout", b"abc123", 0), Feed("stderr", b"secretXYZ", 0)],
    ),
    max_chunk_bytes=65536,
    idle=[],
)
def test_a_secret_split_across_stdout_and_stderr_is_masked(
    scenario: tuple[str, str, list[Op]], max_chunk_bytes: int, idle: list[bool]
) -> None:
    """Issue 20 finding 8: each stream was masked on its own, so a value written half to
    stdout and half to stderr went out whole to any client that shows both."""
    secret, written, ops = scenario
    run = drive(ops, max_chunk_bytes=max_chunk_bytes, masker=Masker([secret]), idle=idle)
    everything = "".join(c.text for c in run.chunks)
    assert secret not in everything and MASK in everything
    for stream in STREAMS:
        assert secret not in per_stream(run.chunks, stream)
    # Only the secret went: the filler on both sides is all there.
    assert everything == written.replace(secret, MASK)
    check_chunk_shape(run, max_chunk_bytes)


@PROPS
@given(
    secrets=st.lists(st.text(alphabet="abc", min_size=1, max_size=5), max_size=4),
    text=st.text(alphabet="abcd", max_size=60),
    cuts=st.lists(st.integers(min_value=0, max_value=60), max_size=10),
)
@example(secrets=["ab", "abcd"], text="xabcdx", cuts=[3])
@example(secrets=["aa"], text="aaa", cuts=[1, 2])
def test_stream_masking_equals_one_shot_masking(
    secrets: list[str], text: str, cuts: list[int]
) -> None:
    """Any secrets, overlapping ones included, any split: feeding the pieces gives exactly what
    masking the whole text at once gives."""
    masker = Masker(secrets)
    sm = masker.stream()
    points = [0, *sorted({c for c in cuts if c <= len(text)}), len(text)]
    out = "".join(sm.feed(text[a:b]) for a, b in itertools.pairwise(points))
    out += sm.final()
    assert out == masker.mask(text)


def test_masker_units() -> None:
    m = Masker(["s3cr3t", "", "s3cr3t-longer"])
    assert m.secrets == ("s3cr3t-longer", "s3cr3t")
    assert m.mask("a s3cr3t-longer b s3cr3t c") == "a *** b *** c"
    assert bool(m) and not bool(Masker(["", ""]))
    assert Masker([]).mask("s3cr3t") == "s3cr3t"
    assert Masker(["a.b"]).mask("a.b axb") == "*** axb", "secrets are literal, not regexes"


def test_masker_from_env() -> None:
    env = {"AWS_SECRET_ACCESS_KEY": "wJalrXUt", "TOKEN": "tok", "PLAIN": "x"}
    m = Masker.from_env(env, ["AWS_SECRET_ACCESS_KEY", "TOKEN", "MISSING"])
    assert m.mask("wJalrXUt tok x") == "*** *** x"


def test_stream_masker_holds_only_a_possible_secret_prefix() -> None:
    sm = Masker(["hunter2"]).stream()
    assert sm.feed("password: hun") == "password: "
    assert sm.held == 3
    assert sm.feed("ter") == ""
    assert sm.feed("2!\n") == "***!\n"
    assert sm.held == 0
    assert sm.feed("hunt") == ""
    assert sm.final() == "hunt", "at the end a prefix is just text"
    assert sm.final() == ""


def test_stream_masker_without_secrets_passes_text_through() -> None:
    sm = Masker([]).stream()
    assert sm.feed("anything") == "anything"
    assert sm.held == 0 and sm.final() == ""


def test_mask_text_is_never_masked_again() -> None:
    """A secret that looks like the mask (or contains it) does not eat neighbouring text."""
    m = Masker(["**", "x*"])
    sm = m.stream()
    out = sm.feed("a**") + sm.feed("*b") + sm.final()
    assert out == m.mask("a***b")
