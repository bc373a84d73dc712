"""The executor alone (real processes, no Redis, no Celery): how it reads the pipes.

A stream that trickles is held until its chunk is due instead of read at every write; these
tests check what holding must not change (the relative order of stdout and stderr, every byte,
a burst after a trickle) and that it does cut the reads. With `idle` (the publisher's "nothing
in flight") sparse output goes out at once and is not held; bursts still coalesce.
"""

from __future__ import annotations

import contextlib
import os
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from events.coalescer import Stream
from worker.executor import CommandSpec, Executor, StopReason


def run(
    script: str,
    *,
    flush_interval_ms: int = 20,
    idle: bool = False,
    at: list[float] | None = None,
) -> tuple[Executor, list[tuple[Stream, str]]]:
    """Run the script; `idle`: what the publisher's "nothing in flight" always answers; `at`
    gets when each chunk came out (time.monotonic, the clock the script can read too)."""
    chunks: list[tuple[Stream, str]] = []

    def emit(stream: Stream, text: str) -> None:
        chunks.append((stream, text))
        if at is not None:
            at.append(time.monotonic())

    executor = Executor(
        CommandSpec([sys.executable, "-c", textwrap.dedent(script)], env=dict(os.environ)),
        emit,
        flush_interval_ms=flush_interval_ms,
        output_idle=lambda: idle,
    )
    try:
        result = executor.run()
    finally:
        executor.close()
    assert result.status == "completed", result.error
    return executor, chunks


def lines_in_order(chunks: list[tuple[Stream, str]]) -> list[tuple[Stream, str]]:
    """Each line with its stream, in the order the chunks came out."""
    out: list[tuple[Stream, str]] = []
    for stream, text in chunks:
        out += [(stream, line) for line in text.splitlines()]
    return out


@pytest.mark.parametrize("idle", [False, True])
def test_alternating_streams_keep_their_order(idle: bool) -> None:
    """stdout trickles (so it is held) and stderr speaks between its lines: every stderr line
    must come out after the stdout line written before it and before the next one."""
    _, chunks = run(
        """
        import os, time
        for i in range(60):
            os.write(1, b"out %d\\n" % i)
            time.sleep(0.003)
            if i % 3 == 2:
                os.write(2, b"err %d\\n" % i)
                time.sleep(0.003)
        """,
        idle=idle,
    )
    expected: list[tuple[Stream, str]] = []
    for i in range(60):
        expected.append(("stdout", f"out {i}"))
        if i % 3 == 2:
            expected.append(("stderr", f"err {i}"))
    assert lines_in_order(chunks) == expected


@pytest.mark.parametrize("idle", [False, True])
def test_a_trickling_stream_is_read_once_per_chunk_not_once_per_line(idle: bool) -> None:
    """300 lines, one per ms: read at every write that is ~300 reads; held, about one read per
    20 ms window (and the one that noticed the data is the same read)."""
    executor, chunks = run(
        """
        import os, time
        t = time.monotonic()
        for i in range(300):
            os.write(1, b"%d\\n" % i)
            t += 0.001
            time.sleep(max(0.0, t - time.monotonic()))
        """,
        idle=idle,
    )
    assert lines_in_order(chunks) == [("stdout", str(i)) for i in range(300)]
    assert executor.reads < 100, f"{executor.reads} reads for 300 lines"


@pytest.mark.parametrize("idle", [False, True])
def test_a_burst_after_a_trickle_arrives_whole(idle: bool) -> None:
    """A held stream that suddenly writes 4 MiB: nothing lost, nothing reordered, and the
    stream is drained at full speed again (chunks at the maximum size)."""
    _, chunks = run(
        """
        import os, sys, time
        for i in range(20):
            os.write(1, b"tick %d\\n" % i)
            time.sleep(0.002)
        os.write(2, b"burst\\n")
        sys.stdout.buffer.write(b"x" * (4 * 1024 * 1024) + b"\\nend\\n")
        sys.stdout.flush()
        """,
        idle=idle,
    )
    out = "".join(t for s, t in chunks if s == "stdout")
    assert out == "".join(f"tick {i}\n" for i in range(20)) + "x" * (4 * 1024 * 1024) + "\nend\n"
    order = lines_in_order(chunks)
    assert order.index(("stdout", "tick 19")) < order.index(("stderr", "burst"))
    assert order.index(("stderr", "burst")) < order.index(("stdout", "end"))
    assert max(len(t) for s, t in chunks if s == "stdout") == 64 * 1024


@pytest.mark.parametrize("idle", [False, True])
def test_output_written_just_before_exit_is_not_lost_while_held(idle: bool) -> None:
    """The last lines trickle (held) and the command exits: they still come out."""
    _, chunks = run(
        """
        import os, time
        for i in range(5):
            os.write(1, b"%d\\n" % i)
            time.sleep(0.002)
        os.write(2, b"bye\\n")
        """,
        flush_interval_ms=1000,
        idle=idle,
    )
    assert lines_in_order(chunks) == [("stdout", str(i)) for i in range(5)] + [("stderr", "bye")]


def test_sparse_output_goes_out_at_once_when_nothing_is_in_flight() -> None:
    """Each line after a quiet interval comes out without waiting for the (1 s) window: well
    before the window, or before the command's exit flushes it."""
    at: list[float] = []
    _, chunks = run(
        """
        import os, time
        os.write(1, b"%r\\n" % time.monotonic())
        time.sleep(1.1)
        os.write(1, b"%r\\n" % time.monotonic())
        time.sleep(0.7)
        """,
        flush_interval_ms=1000,
        idle=True,
        at=at,
    )
    assert len(chunks) == 2
    for (_, text), emitted in zip(chunks, at, strict=True):
        # The fixed window: >= 1 s for the first, >= 0.7 s (the exit) for the second.
        assert emitted - float(text) < 0.35


@pytest.mark.parametrize(
    ("idle", "expected"),
    [
        # The first line after the quiet goes alone; the lines right after it are a burst.
        (True, [("stdout", "0\n"), ("stdout", "1\n2\n")]),
        # Earlier output in flight: everything waits for the window, as before issue 19.
        (False, [("stdout", "0\n1\n2\n")]),
    ],
)
def test_lines_close_together_coalesce(idle: bool, expected: list[tuple[Stream, str]]) -> None:
    _, chunks = run(
        """
        import os, time
        for i in range(3):
            os.write(1, b"%d\\n" % i)
            time.sleep(0.05)
        """,
        flush_interval_ms=1000,
        idle=idle,
    )
    assert chunks == expected


@pytest.mark.parametrize("guard", [True, False])
def test_before_spawn_runs_when_all_but_the_start_is_done(guard: bool, tmp_path: Path) -> None:
    """A fan-out step's start barrier waits in `before_spawn`: the command must not have
    started yet then, and starts right after."""
    marker = tmp_path / "started"
    seen: list[bool] = []
    executor = Executor(
        CommandSpec(["touch", str(marker)], env=dict(os.environ)),
        lambda stream, text: None,
        guard=guard,
        before_spawn=lambda: seen.append(marker.exists()),
    )
    try:
        result = executor.run()
    finally:
        executor.close()
    assert result.status == "completed", result.error
    assert seen == [False] and marker.exists()


@pytest.mark.parametrize("guard", [True, False])
def test_a_stop_while_waiting_to_spawn_starts_nothing(guard: bool, tmp_path: Path) -> None:
    """A cancel that comes while the step's hosts wait for each other: the command never
    starts, its guard goes away, and the run ends cancelled."""
    marker = tmp_path / "started"
    executor: Executor

    def cancel_meanwhile() -> None:
        executor.request_stop(StopReason.CANCELLED)

    executor = Executor(
        CommandSpec(["touch", str(marker)], env=dict(os.environ)),
        lambda stream, text: None,
        guard=guard,
        before_spawn=cancel_meanwhile,
    )
    before = _grandchildren()
    try:
        result = executor.run()
    finally:
        executor.close()
    assert result.status == "cancelled" and result.pid is None
    assert not marker.exists()
    # The guard forked for it (a grandchild: the guard server's child) is gone too.
    deadline = time.monotonic() + 5.0
    while _grandchildren() - before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _grandchildren() - before


def _grandchildren() -> set[int]:
    """Live processes two levels down: guards under the guard server, or commands' children."""
    out: set[int] = set()
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            out |= {g.pid for g in child.children() if g.status() != psutil.STATUS_ZOMBIE}
    return out
