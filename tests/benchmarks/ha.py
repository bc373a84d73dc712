"""High availability (issue 18): what CLOUDOPS_REDIS_MIN_REPLICAS=1 costs, and RabbitMQ as the
broker beside Redis.

- `ha-replicas`: on one Sentinel setup of the row's own (a master, a replica, three sentinels:
  tests/sentinel.py), write-to-client latency (1 line/ms, one execution and five at once) and
  the bus throughput (`seq` through the publisher), each with MIN_REPLICAS=1 beside 0, taking
  turns so that both see the same machine.
- `dispatch-brokers`: submit -> execution_started received with RabbitMQ as the broker (a
  vhost of the row's own) beside the Redis broker, both fleets up at once, taking turns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from events.settings import Settings
from tests.benchmarks.core import Context, Figure, alternate, median, percentile_figures, row
from tests.benchmarks.dispatch import WARMUP_RUNS, dispatch_clock
from tests.benchmarks.fleet import Fleet
from tests.benchmarks.latency import StartBarrier, worker_latencies
from tests.benchmarks.throughput import bus_once
from tests.rabbitmq import private_vhost
from tests.sentinel import MASTER_NAME, SentinelSet

AT_ONCE = 5


@contextlib.contextmanager
def sentinel_set(ctx: Context) -> Iterator[SentinelSet]:
    s = SentinelSet(ctx.out_dir / "logs" / f"sentinel-{ctx.run_id}", cuttable=False).start()
    try:
        yield s
    finally:
        s.close()


def on_sentinels(ctx: Context, s: SentinelSet, name: str, min_replicas: int) -> Settings:
    return Settings(
        redis_sentinels=s.addresses,
        redis_sentinel_master=MASTER_NAME,
        redis_min_replicas=min_replicas,
        key_prefix=ctx.key_prefix(name),
    )


@row("ha-replicas", issue=18, title="latency and bus throughput, MIN_REPLICAS=1 beside 0")
def replicas_row(ctx: Context) -> list[Figure]:
    rounds = ctx.pick(3, 1)
    duration_s = 2.0 if not ctx.quick else 0.5
    lines = ctx.pick(2_000_000, 200_000)
    lat: dict[int, list[float]] = {0: [], 1: []}
    many: dict[int, list[float]] = {0: [], 1: []}
    mbs: dict[int, list[float]] = {0: [], 1: []}
    barrier = StartBarrier(ctx.out_dir)
    with sentinel_set(ctx) as s:
        master_url = f"redis://127.0.0.1:{s.master_port()}/0"
        settings = {n: on_sentinels(ctx, s, f"ha-r{n}", n) for n in (0, 1)}
        with (
            Fleet(ctx, "ha-r0", concurrency=AT_ONCE + 1, settings=settings[0]) as f0,
            Fleet(ctx, "ha-r1", concurrency=AT_ONCE + 1, settings=settings[1]) as f1,
        ):
            fleets = {0: f0, 1: f1}
            for fleet in fleets.values():
                worker_latencies(fleet, 1, 0.3)  # warm-up
            for _ in range(rounds):
                for n, fleet in fleets.items():
                    lat[n] += worker_latencies(fleet, 1, duration_s)
                    many[n] += worker_latencies(fleet, AT_ONCE, duration_s, barrier=barrier)
                    barrier.close()
        for _ in range(rounds):
            for n in (0, 1):
                mbs[n].append(bus_once(ctx, lines, settings=settings[n], probe_url=master_url))
    barrier.close()
    for n in (0, 1):
        ctx.latency_ms[f"latency, Sentinel, MIN_REPLICAS={n}"] = lat[n]
        ctx.throughput_mb_s[f"bus, Sentinel, MIN_REPLICAS={n}"] = median(mbs[n])
    base, r1 = "MIN_REPLICAS=0", "MIN_REPLICAS=1"
    one = f"1 execution, {r1}"
    note = f"{rounds} rounds taking turns, {duration_s:g} s of 1 line/ms per execution"
    return [
        *percentile_figures("latency", lat[1], lat[0], base, detail=one, note=note),
        *percentile_figures(
            "latency", many[1], many[0], base, detail=f"{AT_ONCE} at once, {r1}", qs=[99], note=note
        ),
        Figure(
            f"bus throughput, {r1}",
            "MB/s",
            median(mbs[1]),
            median(mbs[0]),
            base,
            note=f"seq {lines} through the publisher on Sentinel, median of {rounds}",
        ),
    ]


@row("dispatch-brokers", issue=18, title="submit -> execution_started, RabbitMQ beside Redis")
def dispatch_brokers_row(ctx: Context) -> list[Figure]:
    runs = ctx.pick(50, 10)
    with private_vhost(f"cloudops-bench-{ctx.run_id}") as vhost:
        on_amqp = Settings(
            redis_url=ctx.redis_url, broker_url=vhost, key_prefix=ctx.key_prefix("disp-amqp")
        )
        with (
            Fleet(ctx, "disp-amqp", concurrency=2, settings=on_amqp) as fa,
            Fleet(ctx, "disp-redis", concurrency=2) as fr,
            dispatch_clock(fa) as on_amqp_ms,
            dispatch_clock(fr) as on_redis_ms,
        ):
            amqp, redis_broker = alternate(runs, on_amqp_ms, on_redis_ms, warmup=WARMUP_RUNS)
    ctx.latency_ms["dispatch: RabbitMQ broker"] = amqp
    ctx.latency_ms["dispatch: Redis broker"] = redis_broker
    note = f"{runs} runs each, alternating, after {WARMUP_RUNS} warm-up runs; events on Redis"
    return percentile_figures(
        "dispatch", amqp, redis_broker, "Redis broker", detail="RabbitMQ broker", note=note, on=50
    )
