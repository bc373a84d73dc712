"""Worker memory per running execution: the RSS of a `cloudops worker`'s process tree (main
process and pool processes; the commands, which run in sessions of their own, left out) with N
sleeping executions, minus the same tree idle, divided by N."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from functools import partial

import psutil

from tests.benchmarks.core import Context, Figure, row, wait_for
from tests.benchmarks.fleet import Fleet

MIB = 1024 * 1024


@dataclass(frozen=True)
class TreeMemory:
    rss: int
    uss: int
    pool_rss: list[int]  # each pool process's RSS


def worker_tree_memory(worker_pid: int) -> TreeMemory:
    """The worker's processes only: those of its session (commands run in their own)."""
    root = psutil.Process(worker_pid)
    session = os.getsid(worker_pid)
    rss = uss = 0
    pool: list[int] = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            if os.getsid(proc.pid) != session:
                continue
            info = proc.memory_full_info()
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
        rss += info.rss
        uss += info.uss
        if proc.pid != worker_pid:
            pool.append(info.rss)
    return TreeMemory(rss, uss, pool)


def settled_memory(worker_pid: int, samples: int = 5) -> TreeMemory:
    """The median of a few samples, 0.2 s apart."""
    taken = []
    for _ in range(samples):
        taken.append(worker_tree_memory(worker_pid))
        time.sleep(0.2)
    rss = int(statistics.median(t.rss for t in taken))
    uss = int(statistics.median(t.uss for t in taken))
    return TreeMemory(rss, uss, taken[-1].pool_rss)


@row("memory", issue=3, title="worker memory per running execution")
def memory_row(ctx: Context) -> list[Figure]:
    n = ctx.pick(20, 4)
    with Fleet(ctx, "memory", concurrency=n) as fleet:
        worker_pid = fleet.workers[0].pid
        # Warm every pool process (its first task builds its Redis clients and publisher), so
        # that the difference below is what a running execution costs, not a first run.
        warm = [fleet.submit("sleep 1") for _ in range(n)]
        for execution_id in warm:
            fleet.wait_complete(execution_id)
        time.sleep(0.5)
        idle = settled_memory(worker_pid)
        running = [fleet.submit("sleep 60") for _ in range(n)]
        for execution_id in running:
            wait_for(partial(fleet.records.field, execution_id, "pid"), 30, "its command's pid")
        time.sleep(0.5)
        busy = settled_memory(worker_pid)
        for execution_id in running:
            fleet.dispatcher.cancel(execution_id)
        for execution_id in running:
            fleet.wait_complete(execution_id)
    per_exec_mib = (busy.rss - idle.rss) / n / MIB
    per_pool_mib = statistics.mean(idle.pool_rss) / MIB if idle.pool_rss else None
    note = (
        f"{n} sleeping executions; worker tree RSS {idle.rss / MIB:.0f} MiB idle, "
        f"{busy.rss / MIB:.0f} MiB busy; USS per execution "
        f"{(busy.uss - idle.uss) / n / MIB:.2f} MiB"
    )
    return [
        Figure(
            "worker RSS per running execution",
            "MiB",
            per_exec_mib,
            per_pool_mib,
            "idle pool process",
            note=note,
        )
    ]
