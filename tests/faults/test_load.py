"""Fault 6: 100 concurrent chatty executions for 60 s, with random cancels.

Two workers of 50 pool processes each run them all at once on a private Redis. The commands
start, wait until all of them run, then each prints two lines every 10 ms (a line every 5 ms;
every tenth also on stderr) for 60 s, while a fifth of them are cancelled at random moments and
a sample is followed live. Then the shared invariants are checked for every one of them.

Scale for development (the defaults are the real test):
CLOUDOPS_FAULT_LOAD_EXECUTIONS (100), CLOUDOPS_FAULT_LOAD_SECONDS (60),
CLOUDOPS_FAULT_LOAD_INTERVAL_MS (10, two lines each time), CLOUDOPS_FAULT_LOAD_SEED (random,
printed).
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from events.errors import ExecutionEndedError
from tests.faults.conftest import MakeFleet
from tests.faults.invariants import LEDGER, Tracked, read_history
from tests.helpers import PrivateRedis, wait_until

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.slow]

WORKERS = 2
CANCEL_SHARE = 0.2
FOLLOWED = 10


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    return float(raw) if raw else default


@pytest.fixture
def load_redis(tmp_path: Path) -> object:
    # No AOF: this fault is load, not a Redis crash, and fsync on every write would measure
    # the disk instead.
    server = PrivateRedis(tmp_path, persistent=False)
    server.start()
    yield server
    server.kill()


def test_100_chatty_executions_for_60s_with_random_cancels(
    load_redis: PrivateRedis, make_fleet: MakeFleet
) -> None:
    n = int(_env_number("CLOUDOPS_FAULT_LOAD_EXECUTIONS", 100))
    seconds = _env_number("CLOUDOPS_FAULT_LOAD_SECONDS", 60)
    interval_ms = _env_number("CLOUDOPS_FAULT_LOAD_INTERVAL_MS", 10)
    seed = int(_env_number("CLOUDOPS_FAULT_LOAD_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    print(f"load: {n} executions x {seconds:g} s, 2 lines every {interval_ms:g} ms, seed {seed}")

    fleet = make_fleet(load_redis.url)
    per_worker = -(-n // WORKERS)
    for w in range(WORKERS):
        fleet.start_worker(f"load{w}@faults", concurrency=per_worker)

    go = fleet.tmp / "go"
    t0 = time.monotonic()
    runs: list[Tracked] = [
        fleet.chatty(seconds=seconds, interval_ms=interval_ms, burst=2, go=go) for _ in range(n)
    ]
    for t in rng.sample(runs, min(FOLLOWED, n)):
        fleet.follow(t.execution_id)
    # All of them run at once: that is the load.
    records = fleet.dispatcher.rt.records
    wait_until(
        lambda: all(
            (r := records.get(t.execution_id)) is not None and r.status != "queued" for t in runs
        ),
        60,
        0.2,
        what=f"all {n} executions to start",
    )
    started_s = time.monotonic() - t0
    go.touch()
    t_go = time.monotonic()

    # Random cancels over the run, none in its last seconds (the command may have ended).
    victims = rng.sample(runs, round(n * CANCEL_SHARE))
    plan = sorted((t_go + rng.uniform(0.05, 0.85) * seconds, t) for t in victims)
    cancelled = 0
    for at, t in plan:
        time.sleep(max(0.0, at - time.monotonic()))  # the schedule of the fault itself
        try:
            fleet.dispatcher.cancel(t.execution_id)
        except ExecutionEndedError:
            continue  # it ended first: it must then have completed
        t.expect = frozenset({"cancelled"})
        cancelled += 1
    LEDGER.inject("load: concurrent chatty executions with random cancels")

    fleet.check(timeout_s=seconds + 60)
    total_s = time.monotonic() - t_go
    rt = fleet.dispatcher.rt
    events = sum(len(read_history(rt.redis, rt.keys, t.execution_id).events) for t in runs)
    lines = sum(t.file_text("stdout").count("\n") for t in runs)
    print(
        f"load: {n} executions started within {started_s:.1f} s, {cancelled} cancelled,"
        f" {lines} stdout lines in {events} events; all ended and checked {total_s:.1f} s after"
        " the output began"
    )
    assert cancelled >= len(victims) // 2, "most cancels must land while running"
