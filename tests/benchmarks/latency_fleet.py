"""Write-to-client latency with 100 chatty executions at once (issue 8).

One line every 10 ms per execution (10,000 lines/s in all: 100 commands at one line per ms
would need more CPU for the commands alone than this 2-core machine has), each execution on a
pool process of its own (two workers of 51), each read by its own Follower. Baseline: the same
100 commands read straight from their pipes by one process.
"""

from __future__ import annotations

from tests.benchmarks.core import Context, Figure, percentile, row
from tests.benchmarks.fleet import Fleet
from tests.benchmarks.latency import pipe_latencies, worker_latencies

INTERVAL_MS = 10.0


@row("latency-100", issue=8, title="write-to-client latency, 100 chatty executions at once")
def latency_fleet_row(ctx: Context) -> list[Figure]:
    many = ctx.pick(100, 10)
    duration_s = ctx.pick(3, 1)
    with Fleet(ctx, "latency100", concurrency=many // 2 + 1) as fleet:
        fleet.start_worker(many // 2 + 1)
        worker_latencies(fleet, 1, 0.3, INTERVAL_MS)  # warm-up
        ours = worker_latencies(fleet, many, duration_s, INTERVAL_MS)
    pipe = pipe_latencies(many, duration_s, INTERVAL_MS)
    ctx.latency_ms[f"latency {many} execs: ours"] = ours
    ctx.latency_ms[f"latency {many} execs: plain pipe"] = pipe
    note = f"{len(ours)} lines ours, {len(pipe)} pipe; 1 line/{INTERVAL_MS:g} ms, {duration_s} s"
    return [
        Figure(f"latency p50, {many} at once", "ms", percentile(ours, 50), percentile(pipe, 50),
               "plain pipe"),
        Figure(f"latency p99, {many} at once", "ms", percentile(ours, 99), percentile(pipe, 99),
               "plain pipe", note=note),
    ]  # fmt: skip
