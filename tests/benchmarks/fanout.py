"""Fan-out (issue 14, CONTRACT §7): steps on every one of 20 real workers (concurrency 1 each),
beside the same 20 tasks sent raw through Celery to those very workers' worker-direct queues
(tests/benchmarks/fan_raw.py), in turns, in the same run:

- one step of `true`: its playbook_step_start received -> the last playbook_host_complete
  received, beside send -> the last raw result received;
- start skew: when each host's process started (bash's $EPOCHREALTIME, printed), how long
  after the first host's of the same step, beside the raw tasks' processes';
- a 3-step fan-out playbook: submit -> execution_complete received, beside three rounds of the
  20 raw tasks one after another.

The workers run on a redis-server of the row's own (no other engineer's traffic on it), are
started at once, waited for in the host registry, shared by the three figures and always
stopped.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from events.settings import Settings
from tests.benchmarks.core import (
    Context,
    Figure,
    Target,
    median,
    percentile,
    percentile_figures,
    row,
)
from tests.benchmarks.dispatch import Arrival, EventTimes
from tests.benchmarks.fan_raw import send_raw
from tests.benchmarks.fleet import Fleet
from tests.helpers import PrivateRedis
from worker.app import client_app

ROW = "fleet_fanout"
WARMUP_RUNS = 1
# Prints when the host's process (bash) started: the moment the skew is about.
STAMP = "echo $EPOCHREALTIME"
STEPS = 3


@dataclass
class Rig:
    """The row's fleet of `hosts` on one queue, its event clock and its raw Celery client."""

    fleet: Fleet
    hosts: list[str]
    queue: str
    times: EventTimes
    raw_app: Any

    # -- ours ---------------------------------------------------------------------------------
    def playbook(self, command: str, steps: int = 1) -> dict[str, Any]:
        fan = {"command": command, "targets": {"queue": self.queue}}
        return {"name": "fan-bench", "steps": [{"id": f"s{n}", **fan} for n in range(steps)]}

    def run(self, command: str, steps: int = 1) -> tuple[float, list[Arrival]]:
        """Submit; (when the submit began, the execution's events), checked: every host of
        every step completed, the run too."""
        t0 = time.monotonic()
        ex = self.fleet.dispatcher.submit_playbook(self.playbook(command, steps))
        self.times.wait_for(ex, "execution_complete", timeout_s=60)
        events = self.times.of(ex)
        ends = [a.payload for a in events if a.event == "playbook_host_complete"]
        if len(ends) != steps * len(self.hosts) or any(p["status"] != "completed" for p in ends):
            raise RuntimeError(f"{ex}: not every host completed: {ends}")
        if events[-1].payload["status"] != "completed":
            raise RuntimeError(f"{ex} ended {events[-1].payload['status']}")
        return t0, events

    def step_ms(self) -> float:
        """A step of `true`: step start -> the last host's end, both as received."""
        _, events = self.run("true")
        start = next(a.at for a in events if a.event == "playbook_step_start")
        last = max(a.at for a in events if a.event == "playbook_host_complete")
        return (last - start) * 1000

    def skew_ms(self) -> tuple[list[float], float]:
        """(each host's process start after the first one's, the spread of the
        playbook_host_start events as received), ms."""
        _, events = self.run(STAMP)
        out: dict[str, str] = {}
        for a in events:
            if a.event == "execution_output":
                out[a.payload["host"]] = out.get(a.payload["host"], "") + a.payload["output"]
        host_starts = [a.at for a in events if a.event == "playbook_host_start"]
        return lags([float(text) for text in out.values()]), spread_ms(host_starts)

    def playbook_ms(self) -> float:
        """A 3-step fan-out playbook: submit -> execution_complete received."""
        t0, events = self.run("true", STEPS)
        return (events[-1].at - t0) * 1000

    # -- raw Celery ---------------------------------------------------------------------------
    def raw_round(self, command: str) -> tuple[float, list[dict[str, Any]]]:
        """The raw task sent to every host's worker-direct queue: (send -> the last result
        received in ms, the results)."""
        settings = self.fleet.settings
        assert settings.redis_url is not None
        reply_key = f"{settings.key_prefix}:raw:{uuid.uuid4().hex[:8]}"
        t0 = time.monotonic()
        for host in self.hosts:
            send_raw(self.raw_app, host, settings.redis_url, reply_key, command)
        replies: list[dict[str, Any]] = []
        deadline = t0 + 60
        while len(replies) < len(self.hosts):
            got = self.fleet.redis.blpop([reply_key], timeout=max(0.1, deadline - time.monotonic()))
            if got is None:
                raise TimeoutError(f"{len(replies)} of {len(self.hosts)} raw tasks ran")
            replies.append(json.loads(got[1]))
        ms = (time.monotonic() - t0) * 1000
        if any(r["exitCode"] != 0 for r in replies):
            raise RuntimeError(f"a raw task failed: {replies}")
        return ms, replies

    def raw_step_ms(self) -> float:
        return self.raw_round("true")[0]

    def raw_skew_ms(self) -> list[float]:
        return lags([float(r["stdout"]) for r in self.raw_round(STAMP)[1]])

    def raw_playbook_ms(self) -> float:
        return sum(self.raw_round("true")[0] for _ in range(STEPS))


def lags(starts: list[float]) -> list[float]:
    """Each start after the first one, ms."""
    first = min(starts)
    return [(s - first) * 1000 for s in starts]


def spread_ms(times: list[float]) -> float:
    return (max(times) - min(times)) * 1000


@contextlib.contextmanager
def rig(ctx: Context, hosts: int) -> Iterator[Rig]:
    """A private redis-server, `hosts` workers on it (up in the registry), the clock."""
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="bench-fanout-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        server = PrivateRedis(tmp, persistent=False)
        stack.callback(server.kill)  # last: after the workers stopped
        server.start()
        settings = Settings(redis_url=server.url, key_prefix=ctx.key_prefix(ROW))
        fleet = stack.enter_context(Fleet(ctx, ROW, concurrency=0, settings=settings))
        names = [f"fan{n:02d}@{ctx.run_id}" for n in range(1, hosts + 1)]
        queue = f"fanbench-{ctx.run_id}"
        times = EventTimes(fleet.redis, fleet.keys.channel_all())
        stack.callback(times.close)
        raw_app = client_app(settings)
        stack.callback(raw_app.close)
        t0 = time.monotonic()
        fleet.start_hosts(names, queue, preload="tests.benchmarks.fan_raw")
        took = time.monotonic() - t0
        print(f"[bench] {ROW}: {hosts} workers online in {took:.1f} s", file=sys.stderr)
        yield Rig(fleet, names, queue, times, raw_app)


@row(ROW, issue=14, title="fan-out steps on 20 workers vs raw Celery to their worker-direct queues")
def fanout_row(ctx: Context) -> list[Figure]:
    hosts = ctx.pick(20, 3)
    runs = ctx.pick(8, 2)
    step: tuple[list[float], list[float]] = ([], [])
    skew: tuple[list[float], list[float]] = ([], [])
    book: tuple[list[float], list[float]] = ([], [])
    host_start_spreads: list[float] = []
    with rig(ctx, hosts) as r:
        for n in range(WARMUP_RUNS + runs):
            # In turns, so that ours and the baseline see the same machine.
            sample = (
                (r.step_ms(), r.raw_step_ms()),
                (r.skew_ms(), r.raw_skew_ms()),
                (r.playbook_ms(), r.raw_playbook_ms()),
            )
            if n < WARMUP_RUNS:
                continue
            step[0].append(sample[0][0])
            step[1].append(sample[0][1])
            (ours_lags, host_spread), raw_lags = sample[1]
            skew[0].extend(ours_lags)
            skew[1].extend(raw_lags)
            host_start_spreads.append(host_spread)
            book[0].append(sample[2][0])
            book[1].append(sample[2][1])
    on = f"on {hosts} hosts"
    raw = f"raw Celery, {hosts} tasks to worker-direct queues"
    ctx.latency_ms["fan-out step: ours"] = step[0]
    ctx.latency_ms["fan-out step: raw Celery"] = step[1]
    return [
        *percentile_figures(
            f"fan-out step of `true` {on}: step start -> last host complete",
            *step,
            raw,
            target=Target("<=", 2.0, relative=True),
            note=f"{runs} runs each, in turns, after {WARMUP_RUNS} warm-up; raw: send -> the "
            "last result received",
            on=50,
        ),
        *percentile_figures(
            f"fan-out start skew {on} (process start after the first host's)",
            *skew,
            raw,
            target=Target("<=", 50.0, unit="ms"),
            note=f"{runs} steps x {hosts} hosts; bash's $EPOCHREALTIME; the playbook_host_start "
            f"events' spread as received: median {median(host_start_spreads):.1f} ms, "
            f"max {max(host_start_spreads):.1f} ms",
        ),
        *percentile_figures(
            f"{STEPS}-step fan-out playbook {on}: submit -> execution_complete",
            *book,
            f"raw Celery, {STEPS} rounds of {hosts} tasks",
            target=Target("<=", 2000.0, unit="ms"),
            note=f"{runs} runs each; every run <= {percentile(book[0], 100):.0f} ms",
        ),
    ]
