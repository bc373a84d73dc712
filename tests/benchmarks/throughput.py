"""Throughput rows: `seq N` through the event bus (issue 2) and through a real worker (issue 3),
each beside the raw pipe read rate measured in the same row, and the bus beside a naive
one-PUBLISH-per-line streamer."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable

import redis

from events.clients import redis_for
from events.keys import Keys
from events.lifecycle import Reporter
from events.models import ExecutionOptions
from events.publisher import Publisher
from events.settings import Settings
from events.vocabulary import CommandType, Status
from tests.benchmarks.core import Context, Figure, Target, alternate, mb_per_s, median, row
from tests.benchmarks.fleet import Fleet, delete_prefix
from tests.benchmarks.probes import NAIVE_END, Probe, output_bytes
from worker.executor import CommandSpec, Executor

SEQ_LINES = 5_000_000
SEQ_LINES_QUICK = 500_000
NAIVE_LINES = 20_000
NAIVE_LINES_QUICK = 5_000
READ_BYTES = 64 * 1024
TARGET_VS_PIPE = Target(">=", 0.40, relative=True)


def seq_bytes(lines: int) -> int:
    """Bytes `seq lines` prints: every number's digits and a newline."""
    total, digits, low = 0, 1, 1
    while low <= lines:
        high = min(lines, low * 10 - 1)
        total += (high - low + 1) * (digits + 1)
        digits, low = digits + 1, low * 10
    return total


def raw_pipe_once(lines: int) -> float:
    """MB/s of reading `seq lines` from a pipe with os.read(64 KiB)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(["seq", str(lines)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    nbytes = 0
    while chunk := os.read(fd, READ_BYTES):
        nbytes += len(chunk)
    proc.wait()
    elapsed = time.perf_counter() - t0
    proc.stdout.close()
    if nbytes != seq_bytes(lines):
        raise AssertionError(f"raw pipe read {nbytes} bytes, expected {seq_bytes(lines)}")
    return mb_per_s(nbytes, elapsed)


def interleaved(
    ctx: Context, lines: int, repeats: int, ours_once: Callable[[], float]
) -> tuple[float, float]:
    """Medians of (ours, raw pipe), run alternately so that both see the same machine: on 2
    shared cores either rate drifts by a third from one second to the next."""
    ours, pipe = alternate(repeats, ours_once, lambda: raw_pipe_once(lines))
    ctx.throughput_mb_s["raw pipe"] = median(pipe)
    return median(ours), median(pipe)


def bus_once(
    ctx: Context,
    lines: int,
    parse: str = "after",
    settings: Settings | None = None,
    probe_url: str | None = None,
) -> float:
    """MB/s of `seq lines` through executor pipe -> OutputCoalescer -> Publisher -> Redis ->
    a Follower in another process, from the command's start to execution_complete received
    (`parse`: when the subscriber json-parses the payloads, see probes.follow). `settings`
    and `probe_url` (where the subscriber reads): another Redis than the run's (Sentinel)."""
    settings = settings or Settings(redis_url=ctx.redis_url, key_prefix=ctx.key_prefix("bus"))
    client = redis_for(settings)
    execution_id = "ex_bench_" + uuid.uuid4().hex[:12]
    expected = seq_bytes(lines)
    url = probe_url or ctx.redis_url
    try:
        with Probe("follow", url, settings.key_prefix, execution_id, parse) as probe:
            publisher = Publisher(client, Keys(settings.key_prefix), settings)
            reporter = Reporter(publisher, execution_id, worker="bench")
            t0 = time.monotonic()
            started_at = reporter.started(f"seq {lines}", CommandType.SCRIPT, ExecutionOptions())
            executor = Executor(
                CommandSpec(["seq", str(lines)], env=dict(os.environ)),
                reporter.output,
                flush_interval_ms=settings.flush_interval_ms,
                max_chunk_bytes=settings.max_chunk_bytes,
                output_idle=reporter.output_idle,
            )
            try:
                result = executor.run()
            finally:
                executor.close()
            if result.status != "completed":
                raise AssertionError(f"seq ended {result.status}: {result.error}")
            reporter.complete(Status.COMPLETED, started_at, exit_code=0)
            publisher.close(timeout_s=60)
            got = probe.result()
    finally:
        delete_prefix(client, settings.key_prefix)
        client.close()
    if got["bytes"] != expected or not got["contiguous"]:
        raise AssertionError(f"subscriber got {got['bytes']} of {expected} bytes: {got}")
    return mb_per_s(expected, got["end"] - t0)


def naive_once(ctx: Context, lines: int) -> float:
    """MB/s of the first `lines` lines of `seq` sent with one PUBLISH each to a subscriber in
    another process: what a streamer without coalescing or pipelining does."""
    channel = f"{ctx.key_prefix('naive')}:lines"
    client = redis.Redis.from_url(ctx.redis_url)
    nbytes = 0
    try:
        with Probe("naive", ctx.redis_url, channel) as probe:
            t0 = time.monotonic()
            proc = subprocess.Popen(["seq", str(SEQ_LINES)], stdout=subprocess.PIPE)
            assert proc.stdout is not None
            try:
                for _ in range(lines):
                    line = proc.stdout.readline()
                    nbytes += len(line)
                    client.publish(channel, line)
                client.publish(channel, NAIVE_END)
            finally:
                proc.kill()
                proc.wait()
                proc.stdout.close()
            got = probe.result()
    finally:
        client.close()
    if got["bytes"] != nbytes:
        raise AssertionError(f"naive subscriber got {got['bytes']} of {nbytes} bytes")
    return mb_per_s(nbytes, got["end"] - t0)


@row("bus", issue=2, title="event bus throughput: seq through coalescer, publisher, Redis")
def bus_row(ctx: Context) -> list[Figure]:
    lines = ctx.pick(SEQ_LINES, SEQ_LINES_QUICK)
    repeats = ctx.pick(5, 1)
    bus, pipe = interleaved(ctx, lines, repeats, lambda: bus_once(ctx, lines))
    # The same with a subscriber that json-parses every payload before taking the next event.
    parsing = median([bus_once(ctx, lines, parse="each") for _ in range(ctx.pick(3, 1))])
    naive_lines = ctx.pick(NAIVE_LINES, NAIVE_LINES_QUICK)
    naive = naive_once(ctx, naive_lines)
    ctx.throughput_mb_s["bus"] = bus
    ctx.throughput_mb_s["naive PUBLISH per line"] = naive
    what = f"seq {lines}, median of {repeats}, alternating with the raw pipe"
    return [
        Figure(
            "bus throughput vs raw pipe",
            "MB/s",
            bus,
            pipe,
            "raw pipe read",
            target=TARGET_VS_PIPE,
            note=what,
        ),
        Figure(
            "bus throughput vs naive streamer",
            "MB/s",
            bus,
            naive,
            "PUBLISH per line",
            note=f"naive: first {naive_lines} lines",
        ),
        Figure(
            "bus throughput, subscriber parsing each",
            "MB/s",
            parsing,
            pipe,
            "raw pipe read",
            note="the subscriber json-parses every payload on arrival (stdlib json), clocked",
        ),
    ]


def worker_once(fleet: Fleet, lines: int) -> float:
    expected = seq_bytes(lines)
    t0 = time.monotonic()
    execution_id = fleet.submit(f"seq {lines}")
    received: list[str | bytes] = []
    end = None
    for ev in fleet.follower(execution_id, idle_timeout_s=60):
        if ev.event == "execution_output":
            received.append(ev.data)
        elif ev.terminal:
            end = time.monotonic()
    nbytes = output_bytes(received)  # after the clock stopped, as in the bus row's probe
    status = fleet.records.field(execution_id, "status")
    if end is None or status != "completed" or nbytes != expected:
        raise AssertionError(f"{execution_id}: {status}, {nbytes} of {expected} bytes")
    return mb_per_s(expected, end - t0)


@row("worker-throughput", issue=3, title="seq through a real cloudops worker")
def worker_throughput_row(ctx: Context) -> list[Figure]:
    lines = ctx.pick(SEQ_LINES, SEQ_LINES_QUICK)
    repeats = ctx.pick(5, 1)
    with Fleet(ctx, "worker-throughput", concurrency=2) as fleet:
        worker_once(fleet, 1000)  # warm the pool process: Redis clients, imports
        ours, pipe = interleaved(ctx, lines, repeats, lambda: worker_once(fleet, lines))
    ctx.throughput_mb_s["worker"] = ours
    return [
        Figure(
            "worker throughput vs raw pipe",
            "MB/s",
            ours,
            pipe,
            "raw pipe read",
            target=TARGET_VS_PIPE,
            note=f"seq {lines}, submit -> execution_complete received, median of {repeats}"
            ", alternating with the raw pipe",
        )
    ]
