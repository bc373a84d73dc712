"""Faults 2-4: Redis itself breaks while executions stream and followers read.

All on a private redis-server (AOF, fsync on every write) that the workers, the dispatcher and
the followers share through CLOUDOPS_REDIS_URL, broker included:

- restarted mid-stream (SIGKILL, down for a second, started again on the same port and files);
- frozen for 3 s (SIGSTOP, then SIGCONT);
- its pub/sub connections killed (`CLIENT KILL TYPE pubsub`) again and again while followers
  read: theirs and the workers' own (Celery's control channel, which carries revokes).

Each time one execution is cancelled right after the fault, when the worker's control channel
may still be reconnecting; the others must complete, and every follower must have received
every event exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import redis

from tests.faults.conftest import Fleet, MakeFleet, hold
from tests.faults.invariants import LEDGER, Tracked
from tests.helpers import PrivateRedis, wait_until

pytestmark = [pytest.mark.fault, pytest.mark.integration]

WORKERS = 2
PER_WORKER = 3


def run_with_fault(fleet: Fleet, inject: Callable[[], None], *, seconds: float = 8) -> None:
    """Executions on two workers, a follower on each, the fault mid-stream, one cancel after
    it, two more executions once it is over, then the invariants."""
    for n in range(WORKERS):
        fleet.start_worker(f"w{n}@faults", concurrency=PER_WORKER)
    runs = [fleet.chatty(seconds=seconds, interval_ms=5) for _ in range(WORKERS * PER_WORKER)]
    for t in runs:
        fleet.follow(t.execution_id)
    fleet.wait_streaming(runs, min_events=30, timeout_s=30)
    inject()
    victim = runs[0]
    fleet.dispatcher.cancel(victim.execution_id)
    victim.expect = frozenset({"cancelled"})
    after: list[Tracked] = [fleet.chatty(seconds=1, interval_ms=5) for _ in range(2)]
    for t in after:
        fleet.follow(t.execution_id)
    fleet.check(timeout_s=60)


def test_redis_restarted_mid_stream_loses_nothing(
    private_redis: PrivateRedis, make_fleet: MakeFleet
) -> None:
    fleet = make_fleet(private_redis.url)

    def restart() -> None:
        private_redis.kill()
        hold(1.0)  # down long enough that every publisher buffers and every follower retries
        private_redis.start()
        LEDGER.inject("redis restart")

    run_with_fault(fleet, restart)
    assert private_redis.starts == 2
    assert sum(f.follower.reconnects for f in fleet.followers) > 0


def test_redis_frozen_3s_mid_stream_loses_nothing(
    private_redis: PrivateRedis, make_fleet: MakeFleet
) -> None:
    fleet = make_fleet(private_redis.url)
    frozen_s: list[float] = []

    def freeze() -> None:
        before = [fleet.history_len(t.execution_id) for t in fleet.tracked]
        t0 = time.monotonic()
        private_redis.pause()
        try:
            hold(3.0)
        finally:
            private_redis.resume()
        frozen_s.append(time.monotonic() - t0)
        LEDGER.inject("redis frozen 3 s")
        # The streams go on after it: every execution gets new events.
        wait_until(
            lambda: all(
                fleet.history_len(t.execution_id) > n
                for t, n in zip(fleet.tracked, before, strict=True)
            ),
            20,
            what="the streams to move again after the freeze",
        )

    run_with_fault(fleet, freeze)
    assert frozen_s[0] >= 3.0


def test_pubsub_connections_killed_while_followers_read(
    private_redis: PrivateRedis, make_fleet: MakeFleet
) -> None:
    fleet = make_fleet(private_redis.url)
    admin = redis.Redis.from_url(private_redis.url)
    killed: list[int] = []

    def kill_pubsub_repeatedly() -> None:
        # Five rounds over ~3 s: each follower loses its subscription several times, sometimes
        # while it is still refilling from the history after the previous kill.
        for _ in range(5):
            n = int(admin.client_kill_filter(_type="pubsub"))
            if n:
                killed.append(n)
                LEDGER.inject("pub/sub connections killed")
            hold(0.6)

    try:
        run_with_fault(fleet, kill_pubsub_repeatedly, seconds=10)
    finally:
        admin.close()
    assert len(killed) >= 3, f"pub/sub kills that hit a connection: {killed}"
    assert sum(f.follower.reconnects for f in fleet.followers) >= len(fleet.followers)
