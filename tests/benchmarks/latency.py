"""Write-to-client latency (issue 3): a command prints one line every ms holding the time of
its write; the client computes arrival time minus that time for every line. Ours: the command
runs on a real worker and the client is a Follower (one per execution, each in a thread); the
baseline: the same command read straight from its pipe. Alone, and with N at once."""

from __future__ import annotations

import json
import os
import selectors
import shlex
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from tests.benchmarks.core import Context, Figure, Target, percentile_figures, row
from tests.benchmarks.fleet import Fleet

CHATTY = Path(__file__).with_name("chatty.py")


def chatty_argv(
    duration_s: float, line_bytes: int = 0, go_file: Path | None = None, interval_ms: float = 1
) -> list[str]:
    """One line per `interval_ms` (default 1) for `duration_s`; see chatty.py."""
    argv = [sys.executable, "-u", str(CHATTY), str(duration_s), str(interval_ms), str(line_bytes)]
    return argv + ([str(go_file)] if go_file else [])


class LineLatency:
    """Arrival time minus the write time embedded in each line; lines may span chunks."""

    def __init__(self) -> None:
        self._partial = ""
        self.samples_ms: list[float] = []

    def feed(self, text: str, arrived_ns: int) -> None:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if line:
                written_ns = int(line.partition(" ")[0])
                self.samples_ms.append((arrived_ns - written_ns) / 1e6)


class StartBarrier:
    """Every chatty command started (interpreter up, waiting) before any prints: the figure is
    then of N executions running at once, not of the first ones printing while the last ones
    start (each start costs a task, a fork and a Python start-up, ~80 ms of CPU)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.go_file = folder / f"go-latency-{uuid.uuid4().hex[:12]}"

    def release(self, expected: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        pattern = f"{self.go_file.name}.ready.*"
        while len(list(self.go_file.parent.glob(pattern))) < expected:
            if time.monotonic() > deadline:
                raise AssertionError(f"fewer than {expected} chatty commands started")
            time.sleep(0.01)
        self.go_file.touch()

    def close(self) -> None:
        self.go_file.unlink(missing_ok=True)


def pipe_latencies(
    executions: int,
    duration_s: float,
    interval_ms: float = 1,
    barrier: StartBarrier | None = None,
) -> list[float]:
    """The baseline: `executions` chatty commands read directly from their pipes."""
    sel = selectors.DefaultSelector()
    procs = []
    collectors: dict[int, LineLatency] = {}
    go_file = barrier.go_file if barrier else None
    try:
        for _ in range(executions):
            argv = chatty_argv(duration_s, interval_ms=interval_ms, go_file=go_file)
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
            assert proc.stdout is not None
            procs.append(proc)
            fd = proc.stdout.fileno()
            collectors[fd] = LineLatency()
            sel.register(fd, selectors.EVENT_READ)
        if barrier:
            barrier.release(executions)
        open_fds = len(collectors)
        while open_fds:
            for key, _ in sel.select(timeout=duration_s + 30):
                fd = int(key.fd)
                data = os.read(fd, 65536)
                arrived = time.time_ns()
                if not data:
                    sel.unregister(fd)
                    open_fds -= 1
                    continue
                collectors[fd].feed(data.decode(), arrived)
    finally:
        sel.close()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
    return [s for c in collectors.values() for s in c.samples_ms]


def worker_latencies(
    fleet: Fleet,
    executions: int,
    duration_s: float,
    interval_ms: float = 1,
    barrier: StartBarrier | None = None,
) -> list[float]:
    """Ours: `executions` chatty commands on the fleet, each read by its own Follower. With a
    barrier, the fleet's concurrency must let all of them run at once."""
    go_file = barrier.go_file if barrier else None
    command = shlex.join(chatty_argv(duration_s, interval_ms=interval_ms, go_file=go_file))
    collectors = [LineLatency() for _ in range(executions)]
    errors: list[str] = []

    def follow(execution_id: str, collector: LineLatency) -> None:
        status = None
        for ev in fleet.follower(execution_id, idle_timeout_s=duration_s + 60):
            if ev.event == "execution_output":
                arrived = time.time_ns()
                collector.feed(json.loads(ev.data)["payload"]["output"], arrived)
            elif ev.terminal:
                status = json.loads(ev.data)["payload"]["status"]
        if status != "completed":
            errors.append(f"{execution_id}: {status}")

    threads = []
    for collector in collectors:
        execution_id = fleet.submit(command)
        t = threading.Thread(target=follow, args=(execution_id, collector), daemon=True)
        t.start()
        threads.append(t)
    if barrier:
        barrier.release(executions)
    for t in threads:
        t.join(timeout=duration_s + 90)
    if errors or any(t.is_alive() for t in threads):
        raise AssertionError(f"chatty executions did not complete: {errors}")
    # A loaded machine misses ticks, not half of them.
    expected_lines = int(duration_s * 1000 / interval_ms * 0.5)
    short = [len(c.samples_ms) for c in collectors if len(c.samples_ms) < expected_lines]
    if short:
        raise AssertionError(f"executions with too few lines: {short}")
    return [s for c in collectors for s in c.samples_ms]


@row("latency", issue=3, title="write-to-client latency, 1 line/ms, alone and N at once")
def latency_row(ctx: Context) -> list[Figure]:
    many = ctx.pick(20, 5)
    duration_s = ctx.pick(3, 1)
    barrier = StartBarrier(ctx.out_dir)
    try:
        with Fleet(ctx, "latency", concurrency=many + 1) as fleet:
            worker_latencies(fleet, 1, 0.3)  # warm-up: a pool process's first task sets it up
            ours_1 = worker_latencies(fleet, 1, duration_s)
            ours_n = worker_latencies(fleet, many, duration_s, barrier=barrier)
            barrier.close()
            ours_staggered = worker_latencies(fleet, many, duration_s)
        pipe_1 = pipe_latencies(1, duration_s)
        pipe_n = pipe_latencies(many, duration_s, barrier=barrier)
        barrier.close()
        pipe_staggered = pipe_latencies(many, duration_s)
    finally:
        barrier.close()
    ctx.latency_ms["latency 1 exec: ours"] = ours_1
    ctx.latency_ms["latency 1 exec: plain pipe"] = pipe_1
    ctx.latency_ms[f"latency {many} execs: ours"] = ours_n
    ctx.latency_ms[f"latency {many} execs: plain pipe"] = pipe_n
    ctx.latency_ms[f"latency {many} execs, staggered start: ours"] = ours_staggered
    ctx.latency_ms[f"latency {many} execs, staggered start: plain pipe"] = pipe_staggered
    figures: list[Figure] = []
    for label, ours, pipe, target_ms in (
        ("1 execution", ours_1, pipe_1, 25.0),
        (f"{many} at once", ours_n, pipe_n, 50.0),
    ):
        note = f"{len(ours)} lines ours, {len(pipe)} pipe; {duration_s} s per execution"
        if ours is ours_n:
            note += "; all started, then all print (start barrier)"
        figures += percentile_figures(
            "latency",
            ours,
            pipe,
            "plain pipe",
            detail=label,
            target=Target("<=", target_ms, unit="ms"),
            note=note,
        )
    figures += percentile_figures(
        "latency",
        ours_staggered,
        pipe_staggered,
        "plain pipe",
        detail=f"{many} started one by one",
        qs=[99],
        note="no barrier: the first print while the last start up (each start ~80 ms CPU)",
    )
    return figures
