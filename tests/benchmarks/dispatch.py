"""Dispatch (issue 3): submit -> `execution_started` received, beside a raw Celery no-op task
(send -> the task's start notice received) on the same broker in the same run. `EventTimes`
hears every event (also the fan-out row's, tests/benchmarks/fanout.py)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis

from events.subscriber import as_is
from tests.benchmarks.core import Context, Figure, Target, alternate, percentile_figures, row
from tests.benchmarks.fleet import Fleet, delete_prefix
from tests.benchmarks.noop_app import make_app, send_noop
from tests.helpers import start_process, venv_path_env

WARMUP_RUNS = 3


@dataclass(frozen=True)
class Arrival:
    """One event as the channel delivered it: when (time.monotonic), its name and payload."""

    at: float
    event: str
    payload: dict[str, Any]


class EventTimes:
    """Every event of every execution, stamped with its arrival time, from the all-executions
    channel, subscribed before anything is submitted."""

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self._pubsub = client.pubsub(push_handler_func=as_is)  # type: ignore[no-untyped-call]
        self._pubsub.subscribe(channel)
        while (m := self._pubsub.get_message(timeout=5.0)) is None or m["type"] != "subscribe":
            pass
        self._events: dict[str, list[Arrival]] = {}
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="bench-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            msg = self._pubsub.get_message(timeout=0.2)
            if msg is None or msg["type"] != "message":
                continue
            arrived = time.monotonic()
            env = json.loads(msg["data"])
            with self._cond:
                got = self._events.setdefault(env["executionId"], [])
                got.append(Arrival(arrived, env["event"], env["payload"]))
                self._cond.notify_all()

    def wait_for(self, execution_id: str, event: str, timeout_s: float = 15.0) -> Arrival:
        """The execution's first `event`."""

        def first() -> Arrival | None:
            return next((a for a in self._events.get(execution_id, ()) if a.event == event), None)

        with self._cond:
            if (found := self._cond.wait_for(first, timeout_s)) is None:
                raise TimeoutError(f"no {event} for {execution_id} within {timeout_s:g} s")
            return found

    def of(self, execution_id: str) -> list[Arrival]:
        """The execution's events received so far, in order."""
        with self._cond:
            return list(self._events.get(execution_id, ()))

    def wait_started(self, execution_id: str, timeout_s: float = 15.0) -> float:
        return self.wait_for(execution_id, "execution_started", timeout_s).at

    def wait_complete(self, execution_id: str, timeout_s: float = 15.0) -> None:
        self.wait_for(execution_id, "execution_complete", timeout_s)

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self._pubsub.close()


class RawCelery:
    """A plain `celery worker` of the no-op app, on its own key prefix and queue."""

    def __init__(self, ctx: Context, concurrency: int) -> None:
        self.redis_url = ctx.redis_url
        self.prefix = ctx.key_prefix("dispatch-raw")
        self.queue = f"{self.prefix}-noop"
        argv = [sys.executable, "-m", "tests.benchmarks.noop_app", ctx.redis_url, self.prefix]
        argv += [self.queue, str(concurrency), f"noop@{ctx.run_id}"]
        env = venv_path_env(dict(os.environ))
        log_path = ctx.log_dir / "dispatch-raw-worker.log"
        self.proc = start_process(argv, env, log_path, "noop worker")
        self.client = redis.Redis.from_url(ctx.redis_url)
        self.app = make_app(ctx.redis_url, self.prefix, self.queue)
        try:
            self.proc.wait_for_log(" ready.", timeout_s=60)
        except BaseException:
            self.close()
            raise

    def dispatch_ms(self) -> float:
        """Send the no-op task; milliseconds until its start notice is received."""
        reply_key = f"{self.prefix}:reply:{uuid.uuid4().hex[:8]}"
        t0 = time.monotonic()
        send_noop(self.app, self.redis_url, reply_key, self.queue)
        if self.client.blpop([reply_key], timeout=15) is None:
            raise TimeoutError("the no-op task did not run")
        return (time.monotonic() - t0) * 1000

    def drain_per_s(self, tasks: int, timeout_s: float = 120.0) -> float:
        """Send `tasks` no-op tasks at once; tasks per second until the last one started."""
        reply_key = f"{self.prefix}:drain:{uuid.uuid4().hex[:8]}"
        t0 = time.monotonic()
        for _ in range(tasks):
            send_noop(self.app, self.redis_url, reply_key, self.queue)
        deadline = t0 + timeout_s
        while int(self.client.llen(reply_key)) < tasks:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{tasks} no-op tasks did not all run in {timeout_s:g} s")
            time.sleep(0.005)
        return tasks / (time.monotonic() - t0)

    def close(self) -> None:
        self.proc.stop(timeout_s=10)
        self.app.close()
        delete_prefix(self.client, self.prefix)
        self.client.close()


def ours_dispatch_ms(fleet: Fleet, times: EventTimes) -> float:
    """Submit a no-op command; milliseconds until its execution_started is received."""
    t0 = time.monotonic()
    execution_id = fleet.submit("true")
    started = times.wait_started(execution_id)
    times.wait_complete(execution_id)
    return (started - t0) * 1000


@contextlib.contextmanager
def dispatch_clock(fleet: Fleet) -> Iterator[Callable[[], float]]:
    """`ours_dispatch_ms` on `fleet`, its events heard on a channel subscribed to first."""
    times = EventTimes(fleet.redis, fleet.keys.channel_all())
    try:
        yield lambda: ours_dispatch_ms(fleet, times)
    finally:
        times.close()


@row("dispatch", issue=3, title="submit -> execution_started received vs raw Celery no-op")
def dispatch_row(ctx: Context) -> list[Figure]:
    runs = ctx.pick(50, 10)
    # Both fleets are up at once and take turns, so that both see the same machine load.
    with Fleet(ctx, "dispatch", concurrency=2) as fleet, dispatch_clock(fleet) as ours:
        baseline = RawCelery(ctx, concurrency=2)
        try:
            raw, mine = alternate(runs, baseline.dispatch_ms, ours, warmup=WARMUP_RUNS)
        finally:
            baseline.close()
    ctx.latency_ms["dispatch: ours"] = mine
    ctx.latency_ms["dispatch: raw Celery"] = raw
    return percentile_figures(
        "dispatch",
        mine,
        raw,
        "raw Celery no-op",
        target=Target("<=", 3.0, relative=True),
        note=f"{runs} runs each, alternating, after {WARMUP_RUNS} warm-up runs; raw: send -> "
        "the task's start notice received (RPUSH/BLPOP)",
        on=50,
    )
