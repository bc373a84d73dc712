"""Adaptive flushing (issue 19): sparse output goes out at once while nothing is in flight; a
burst, or output while earlier output is in flight, coalesces up to the window as before.

The coalescer is driven the way the executor drives it (tests/test_coalescer.py `drive`), with
the publisher's "nothing in flight" passed in; the events-per-second bound is a simulation of
a trickling command against an instant Redis (always idle: the most events adaptivity can cause)
beside the fixed window.
"""

from __future__ import annotations

import pytest

from events.coalescer import OutputCoalescer, Stream
from events.masking import MASK, Masker
from tests.test_coalescer import Feed, drive

Emitted = list[tuple[Stream, str]]


def coalescer(**kw: object) -> tuple[OutputCoalescer, Emitted]:
    emitted: Emitted = []
    c = OutputCoalescer(lambda s, t: emitted.append((s, t)), **kw)  # type: ignore[arg-type]
    return c, emitted


def test_a_sparse_line_is_due_at_once_when_nothing_is_in_flight() -> None:
    c, _ = coalescer()
    assert c.at_once(5.0, idle=True)
    c.feed("stdout", b"line\n", 5.0)
    assert c.deadline(idle=True) == 5.0 and c.due(5.0, idle=True)
    # The same line while earlier output is in flight waits for the window, as before.
    assert c.deadline(idle=False) == pytest.approx(5.02)
    assert not c.due(5.0, idle=False) and not c.at_once(5.0, idle=False)


def test_a_burst_coalesces_even_when_nothing_is_in_flight() -> None:
    c, emitted = coalescer()
    c.feed("stdout", b"a\n", 1.0)
    c.flush(1.0)
    # Within the interval of the last chunk: a burst, coalesced up to the window.
    assert not c.at_once(1.001, idle=True)
    c.feed("stdout", b"b\n", 1.001)
    c.feed("stderr", b"c\n", 1.005)
    assert c.deadline(idle=True) == pytest.approx(1.021)
    c.flush(1.021)
    assert emitted == [("stdout", "a\n"), ("stdout", "b\n"), ("stderr", "c\n")]
    # A quiet interval later, the next line is sparse again.
    assert c.at_once(1.041, idle=True)


def test_a_chunk_in_flight_then_confirmed_lets_sparse_output_go() -> None:
    """Nagle: sparse output held while the previous chunk was in flight goes as soon as the
    publisher is idle again, never later than the window."""
    c, _ = coalescer()
    c.feed("stdout", b"x", 2.0)
    assert c.deadline(idle=False) == pytest.approx(2.02)
    assert c.due(2.003, idle=True)


def test_a_held_secret_prefix_is_not_flushed_early() -> None:
    c, emitted = coalescer(masker=Masker(["SECRET"]))
    c.feed("stdout", b"token=SEC", 0.0)
    # The masker holds "SEC" back: only what it released is pending, and goes at once.
    assert c.due(0.0, idle=True)
    c.flush(0.0)
    assert "".join(t for _, t in emitted) == "token="
    c.feed("stdout", b"RET done\n", 0.5)
    assert c.due(0.5, idle=True)
    c.flush(0.5)
    assert "".join(t for _, t in emitted) == f"token={MASK} done\n"


def trickle(period_s: float, duration_s: float, line: bytes = b"x" * 40 + b"\n") -> list[Feed]:
    return [Feed("stdout", line, period_s) for _ in range(int(duration_s / period_s))]


def test_sparse_lines_go_out_one_by_one_without_waiting() -> None:
    ops = trickle(0.05, 2.0)
    adaptive = drive(ops, idle=[True])
    assert len(adaptive.chunks) == len(ops)
    fixed = drive(ops)
    assert len(fixed.chunks) == len(ops)
    clock = 0.0
    for i, (op, now, then) in enumerate(zip(ops, adaptive.chunks, fixed.chunks, strict=True)):
        clock += op.dt_s
        assert now.at_s == pytest.approx(clock)
        if i < len(ops) - 1:  # (the last one goes at close)
            assert then.at_s == pytest.approx(clock + 0.02)  # the fixed window, before issue 19


@pytest.mark.parametrize("period_s", [0.0005, 0.001, 0.005, 0.010, 0.015, 0.019, 0.021, 0.05])
def test_a_trickling_command_costs_at_most_1_2x_the_events_of_the_fixed_window(
    period_s: float,
) -> None:
    ops = trickle(period_s, 3.0)
    fixed = len(drive(ops).chunks)
    adaptive = len(drive(ops, idle=[True]).chunks)
    assert adaptive <= 1.2 * fixed, (adaptive, fixed)
