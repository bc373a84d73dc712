"""Write-to-client latency of sparse output (issue 19): one line every 50 ms, measured as the
`latency` row measures dense output (a real worker, a Follower per execution, arrival time minus
the write time in each line), alone and 20 at once (all started, then all print: start
barrier), beside the same commands read straight from their pipes in the same run. With a fixed
flush window every sparse line waited the whole window; adaptive flushing sends it at once."""

from __future__ import annotations

from tests.benchmarks.core import Context, Figure, Target, percentile_figures, row
from tests.benchmarks.fleet import Fleet
from tests.benchmarks.latency import StartBarrier, pipe_latencies, worker_latencies

INTERVAL_MS = 50.0


@row("sparse", issue=19, title="write-to-client latency, 1 line/50 ms, alone and N at once")
def sparse_row(ctx: Context) -> list[Figure]:
    many = ctx.pick(20, 5)
    alone_s = ctx.pick(8, 1)  # 160 lines: enough for a p99 of one execution
    many_s = ctx.pick(4, 1)
    barrier = StartBarrier(ctx.out_dir)
    try:
        with Fleet(ctx, "sparse", concurrency=many + 1) as fleet:
            worker_latencies(fleet, 1, 0.3, INTERVAL_MS)  # warm-up
            ours_1 = worker_latencies(fleet, 1, alone_s, INTERVAL_MS)
            ours_n = worker_latencies(fleet, many, many_s, INTERVAL_MS, barrier=barrier)
        barrier.close()
        pipe_1 = pipe_latencies(1, alone_s, INTERVAL_MS)
        pipe_n = pipe_latencies(many, many_s, INTERVAL_MS, barrier=barrier)
    finally:
        barrier.close()
    for label, ours, pipe in (("1 exec", ours_1, pipe_1), (f"{many} execs", ours_n, pipe_n)):
        ctx.latency_ms[f"sparse {label}: ours"] = ours
        ctx.latency_ms[f"sparse {label}: plain pipe"] = pipe
    alone = f"{len(ours_1)} lines ours, {len(pipe_1)} pipe; {alone_s} s"
    at_once = (
        f"{len(ours_n)} lines ours, {len(pipe_n)} pipe; {many_s} s per execution; all started,"
        " then all print (start barrier: their lines come at the same instants)"
    )
    return [
        *percentile_figures("sparse", ours_1, pipe_1, "plain pipe", detail="1 execution",
                            qs=[50], on=50, target=Target("<=", 1.0, unit="ms")),
        *percentile_figures("sparse", ours_1, pipe_1, "plain pipe", detail="1 execution",
                            qs=[99], target=Target("<=", 5.0, unit="ms"), note=alone),
        *percentile_figures("sparse", ours_n, pipe_n, "plain pipe", detail=f"{many} at once",
                            target=Target("<=", 10.0, unit="ms"), note=at_once),
    ]  # fmt: skip
