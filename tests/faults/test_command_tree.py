"""Faults 2-6: nothing a command starts outlives its execution (issue 13), on real workers.

Four command shapes, each run at once on one worker, under each fault: a child under the shell,
a double-forked daemon in its own session, a daemon that also ignores SIGTERM and SIGHUP, and a
process in a new process group. Every process of a shape carries its marker as argv[0] (`exec
-a`), so /proc tells what is left. Each execution ends with the fault's status and is never run
again; nothing of any shape is left within the kill grace period (cancel, timeout) or 5 s (the
process that ran it died). Last, the second line of defence on its own: with the guard off, a
worker whose whole group was SIGKILLed left a child running, and the worker restarted on the
host kills it, by the record of the command's session, and says so in its log.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from events.models import ExecutionOptions
from events.vocabulary import RecordField
from tests.faults.conftest import Fleet, MakeFleet
from tests.faults.invariants import LEDGER, Tracked, require
from tests.helpers import ManagedProcess, PrivateRedis, live_pids_with, wait_until

pytestmark = [pytest.mark.fault, pytest.mark.integration]

GRACE_S = 1.0
HOST = "tree@faults"
LOST = "worker lost"


def _hold(m: str) -> str:
    """A process marked `m` that the leader waits for (the leader stays up)."""
    return f"(exec -a {m} sleep 300)"


SHAPES: dict[str, Callable[[str], str]] = {
    "child": lambda m: f"(exec -a {m} sleep 300) & echo ready; wait",
    "double-fork": lambda m: f'(setsid bash -c "exec -a {m} sleep 300" &); echo ready; {_hold(m)}',
    "ignores-term-hup": lambda m: (
        f"(setsid bash -c \"trap '' TERM HUP; exec -a {m} sleep 300\" &); echo ready; {_hold(m)}"
    ),
    "new-group": lambda m: f"set -m; (exec -a {m} sleep 300) & echo ready; wait",
}

# fault -> (the status it ends with, what its error must say)
FAULTS = {
    "cancel": ("cancelled", None),
    "timeout": ("timeout", "timed out"),
    "pool-sigkill": ("failed", LOST),
    "main-sigkill": ("failed", LOST),
    "group-sigkill": ("failed", LOST),
}


def submit_shapes(fleet: Fleet, *, timeout: int | None = None) -> list[Tracked]:
    tracked = []
    for n, shape in enumerate(SHAPES.values()):
        marker = f"{fleet.marker}.{n}"
        out = fleet.tmp / f"shape{n}"
        out.mkdir()
        # A file the command appends to when it starts: a second run would show.
        command = f"echo run >> {out}/runs; {shape(marker)}"
        ex = fleet.dispatcher.submit_command(
            command, "script", options=ExecutionOptions(timeout=timeout)
        )
        t = Tracked(ex, out, marker, output_known=False)
        fleet.tracked.append(t)
        tracked.append(t)
    return tracked


def wait_up(tracked: list[Tracked]) -> None:
    # Each shape has its leader (whose command line names the marker) and at least one more.
    wait_until(
        lambda: all(len(live_pids_with(t.marker)) >= 2 for t in tracked),
        30,
        what="every shape's processes to start",
    )


def inject(fleet: Fleet, fault: str, worker: ManagedProcess, tracked: list[Tracked]) -> None:
    if fault == "cancel":
        for t in tracked:
            fleet.dispatcher.cancel(t.execution_id)
    elif fault == "pool-sigkill":
        for t in tracked:
            raw = fleet.dispatcher.rt.records.raw(t.execution_id)
            os.kill(int(raw[RecordField.WORKER_PID]), signal.SIGKILL)
    elif fault == "main-sigkill":
        os.kill(worker.pid, signal.SIGKILL)
        worker.proc.wait(10)
    elif fault == "group-sigkill":
        os.killpg(worker.pid, signal.SIGKILL)
        worker.proc.wait(10)
    LEDGER.inject(f"command tree: {fault}", len(tracked))


@pytest.mark.parametrize("fault", list(FAULTS))
def test_nothing_a_command_starts_outlives_it(
    fault: str, private_redis: PrivateRedis, make_fleet: MakeFleet
) -> None:
    fleet = make_fleet(private_redis.url, lease_ttl_s=3, kill_grace_s=GRACE_S)
    worker = fleet.start_worker(HOST, concurrency=len(SHAPES))
    tracked = submit_shapes(fleet, timeout=2 if fault == "timeout" else None)
    wait_up(tracked)
    status, error = FAULTS[fault]
    for t in tracked:
        t.expect, t.error_contains = frozenset({status}), error
    t0 = time.monotonic()
    if fault != "timeout":
        inject(fleet, fault, worker, tracked)
    else:
        LEDGER.inject(f"command tree: {fault}", len(tracked))
    # Cancel and timeout: within the grace period (the daemons that ignore SIGTERM need the
    # SIGKILL after it); a dead worker: within 5 s.
    limit = (2.0 if fault == "timeout" else 0.0) + (
        GRACE_S + 2.0 if fault in ("cancel", "timeout") else 5.0
    )
    markers = [t.marker for t in tracked]
    wait_until(
        lambda: not any(live_pids_with(m) for m in markers),
        limit,
        0.05,
        what=f"every process of every shape to die after {fault}",
    )
    if fault == "group-sigkill":
        # Nobody is left to end the executions on this host: the worker restarted here does.
        back = fleet.start_worker(HOST, concurrency=len(SHAPES))
    fleet.check(timeout_s=15)
    require(time.monotonic() - t0 < 15 + (2 if fault == "timeout" else 0), "took too long")
    for t in tracked:
        runs = (t.out_dir / "runs").read_text()
        require(runs == "run\n", f"{t.execution_id} ran {runs.count('run')} times")
    if fault == "group-sigkill":
        # The runs files say it too; this says it was not even handed to the new worker.
        require("cloudops.run_command[" not in back.log(), "a lost execution was received again")


def test_a_restarted_worker_kills_what_a_lost_execution_left(
    private_redis: PrivateRedis, make_fleet: MakeFleet
) -> None:
    fleet = make_fleet(private_redis.url, lease_ttl_s=3, kill_grace_s=GRACE_S)
    unguarded = {"CLOUDOPS_GUARD": "0"}
    worker = fleet.start_worker(HOST, concurrency=1, env=unguarded)
    marker = f"{fleet.marker}.0"
    out = fleet.tmp / "left"
    out.mkdir()
    command = f"(exec -a {marker} sleep 300) & echo ready; wait"
    ex = fleet.dispatcher.submit_command(command, "script", options=ExecutionOptions())
    fleet.tracked.append(Tracked(ex, out, marker, frozenset({"failed"}), LOST, False))
    wait_until(lambda: len(live_pids_with(marker)) >= 2, 30, what="the command to start")
    os.killpg(worker.pid, signal.SIGKILL)
    worker.proc.wait(10)
    LEDGER.inject("command tree: group-sigkill, guard off", 1)
    # The leader dies of its parent-death signal; without the guard its child runs on.
    wait_until(lambda: len(live_pids_with(marker)) == 1, 5, what="the leader to die")
    [orphan] = live_pids_with(marker)
    back = fleet.start_worker(HOST, concurrency=1, env=unguarded)
    wait_until(lambda: not live_pids_with(marker), 5, what="the restarted worker to kill it")
    back.wait_for_log(f"left by lost execution {ex}: {orphan} (", timeout_s=5)
    fleet.check(timeout_s=15)
