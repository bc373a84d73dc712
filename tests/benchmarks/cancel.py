"""Cancel latency (issue 3): from the cancel request to `execution_cancelled` received AND the
command's process gone, for a command that obeys SIGTERM (`sleep 60`)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import time

from tests.benchmarks.core import Context, Figure, Target, percentile_figures, row, wait_for
from tests.benchmarks.fleet import Fleet, watching


def process_gone(pid: int) -> bool:
    """True when /proc has no live process `pid` (absent, or a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 :].split()[0] in (b"Z", b"X")


def cancel_once(fleet: Fleet) -> float:
    """One submit, wait until running, cancel; milliseconds until both conditions hold."""
    execution_id = fleet.submit("sleep 60")
    with watching(fleet, execution_id) as watch:
        watch.wait_event("execution_started")
        wait_for(lambda: fleet.records.field(execution_id, "pid"), 10, "the command's pid")
        pid = int(fleet.records.field(execution_id, "pid") or 0)
        if process_gone(pid):
            raise AssertionError(f"{execution_id}: pid {pid} is not running")
        # A pidfd becomes readable when the process ends: its end time without polling /proc.
        pidfd = os.pidfd_open(pid)
        try:
            t0 = time.monotonic()
            fleet.dispatcher.cancel(execution_id)
            ready, _, _ = select.select([pidfd], [], [], 15)
            gone_at = time.monotonic()
        finally:
            os.close(pidfd)
        if not ready or not process_gone(pid):
            raise AssertionError(f"{execution_id}: pid {pid} still runs after the cancel")
        cancelled_at, _ = watch.wait_event("execution_cancelled", 15)
        watch.wait_event("execution_complete", 15)
    return (max(gone_at, cancelled_at) - t0) * 1000


def plain_kill_once() -> float:
    """The baseline: SIGTERM to a plain `sleep 60` child's process group -> process gone."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    pidfd = os.pidfd_open(proc.pid)
    try:
        t0 = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        select.select([pidfd], [], [], 15)
        elapsed_ms = (time.monotonic() - t0) * 1000
    finally:
        os.close(pidfd)
        proc.kill()
        proc.wait()
    return elapsed_ms


@row("cancel", issue=3, title="cancel request -> execution_cancelled received and tree dead")
def cancel_row(ctx: Context) -> list[Figure]:
    runs = ctx.pick(20, 5)
    with Fleet(ctx, "cancel", concurrency=2) as fleet:
        with contextlib.suppress(Exception):
            cancel_once(fleet)  # warm-up: the pool process's first task sets it up
        samples = [cancel_once(fleet) for _ in range(runs)]
    plain = [plain_kill_once() for _ in range(runs)]
    ctx.latency_ms["cancel: ours"] = samples
    ctx.latency_ms["cancel: plain SIGTERM"] = plain
    note = f"{runs} runs of `sleep 60`; process end seen through a pidfd"
    name = "SIGTERM to own child"
    return percentile_figures(
        "cancel latency", samples, plain, name, target=Target("<=", 250, unit="ms"), note=note
    )
