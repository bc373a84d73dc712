"""Batch drain (issue 4): hundreds of playbooks of `true` steps submitted at once, steps per
second until the last one ended, beside the raw Celery no-op throughput of a plain worker
with the same concurrency on the same broker, measured in the same run."""

from __future__ import annotations

from tests.benchmarks.core import Context, Figure, Target, row
from tests.benchmarks.dispatch import RawCelery
from tests.benchmarks.fleet import Fleet
from tests.worker.playbook_batch import drain_playbooks, history_problems

CONCURRENCY = 4
STEPS = 3


@row("batch", issue=4, title="batch drain of playbooks vs raw Celery no-op throughput")
def batch_row(ctx: Context) -> list[Figure]:
    runs = ctx.pick(500, 30)
    with Fleet(ctx, "batch", concurrency=CONCURRENCY) as fleet:
        drain_playbooks(fleet.dispatcher, runs=CONCURRENCY, steps=STEPS)  # warm-up
        result = drain_playbooks(fleet.dispatcher, runs=runs, steps=STEPS, timeout_s=300)
        if result.statuses != {"completed": runs}:
            raise AssertionError(f"playbooks ended {result.statuses}")
        for execution_id in result.execution_ids:
            problems = history_problems(fleet.dispatcher, execution_id, STEPS)
            if problems:
                raise AssertionError(f"{execution_id}: {problems}")
    raw = RawCelery(ctx, concurrency=CONCURRENCY)
    try:
        raw.drain_per_s(CONCURRENCY * 5)  # warm-up
        raw_per_s = raw.drain_per_s(runs * STEPS)
    finally:
        raw.close()
    return [
        Figure(
            f"playbook batch drain, {runs} x {STEPS} steps",
            "steps/s",
            result.steps_per_s,
            raw_per_s,
            "raw Celery no-op",
            baseline_unit="tasks/s",
            target=Target(">=", 150, unit="steps/s"),
            note=f"worker concurrency {CONCURRENCY}; {result.summary()}; every history checked",
        )
    ]
