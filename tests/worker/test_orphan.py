"""A pool process whose worker died never lingers, wherever it is stuck (worker/tasks.py)."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import wait_until
from worker.proctree import alive

BUDGET_S = 3.0

# A "worker" that forks a "pool process" stuck for ever (a wait that nothing will end), then
# dies at once, as a SIGKILLed main process would.
SCRIPT = """
import os, sys, time
from worker.tasks import exit_when_orphaned
parent = os.getpid()
child = os.fork()
if child == 0:
    # Not the parent's stdout and stderr: the test reads them to their end, which must come
    # when the parent exits, not when this one does.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    exit_when_orphaned(parent, BUDGET_S)
    while True:
        time.sleep(3600)
print(child, flush=True)
os._exit(0)
"""


def test_a_stuck_pool_process_exits_once_its_worker_is_gone() -> None:
    out = subprocess.run(
        [sys.executable, "-c", f"BUDGET_S = {BUDGET_S}\n{SCRIPT}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    child = int(out.stdout.split()[0])
    t0 = time.monotonic()
    try:
        assert alive(child), "the stuck process should outlive its parent for the budget"
        wait_until(lambda: not alive(child), 10, what="the orphaned pool process to exit")
        took = time.monotonic() - t0
        assert took < BUDGET_S + 5, f"it exited {took:.1f} s after its parent (budget {BUDGET_S} s)"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


# A "worker" whose main thread (the leader, which forked the pool process) exits while another
# of its threads still runs: what a SIGKILLed worker is until its last thread is gone. The
# child keeps it as parent meanwhile; it must still see that its worker is dead.
ZOMBIE_LEADER = """
import ctypes, os, threading, time
from worker.proctree import parent_died
parent = os.getpid()
child = os.fork()
if child == 0:
    deadline = time.monotonic() + 10
    while not parent_died(parent, wait_s=0.0) and time.monotonic() < deadline:
        time.sleep(0.01)
    print(os.getppid() == parent, parent_died(parent, wait_s=0.0), flush=True)
    os._exit(0)
threading.Thread(target=time.sleep, args=(3,)).start()
ctypes.CDLL(None).syscall(60, 0)  # SYS_exit (x86-64): this thread only, not the process
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the raw exit syscall's number")
def test_a_worker_whose_other_threads_still_exit_counts_as_dead() -> None:
    out = subprocess.run(
        [sys.executable, "-c", ZOMBIE_LEADER], capture_output=True, text=True, timeout=60
    )
    # Still its parent (the old check, a changed ppid, saw a live worker), and yet dead.
    assert out.stdout.split() == ["True", "True"], out
