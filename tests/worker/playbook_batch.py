"""A batch of playbooks through a real fleet: submit many at once, wait for every one to end,
and measure how fast the steps drain. Used by tests/worker/test_playbooks.py and callable from a
benchmark row: `drain_playbooks(dispatcher, runs=500)` on a dispatcher whose workers run.
No pytest here, so a benchmark can import it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from events.subscriber import iter_history
from tests.helpers import CeleryDispatcher, payloads


def true_playbook(steps: int = 3, name: str = "batch of true") -> str:
    """YAML text, as the CLI and the relay submit it: `steps` steps of `true`."""
    lines = [f"name: {name}", "steps:"]
    lines += [f"  - {{id: s{n}, command: 'true'}}" for n in range(1, steps + 1)]
    return "\n".join(lines) + "\n"


@dataclass
class DrainResult:
    runs: int
    steps_per_run: int
    submit_s: float  # submitting them all (validation, record, first task)
    drain_s: float  # from the first submission to the last run's end
    queued_after_submit: int  # runs still `queued` right after the last submission
    max_running: int  # the most runs seen `running` at once while they drained
    execution_ids: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def steps_per_s(self) -> float:
        return self.runs * self.steps_per_run / self.drain_s if self.drain_s > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.runs} playbooks x {self.steps_per_run} steps: submitted in "
            f"{self.submit_s:.2f} s, drained in {self.drain_s:.2f} s = "
            f"{self.steps_per_s:.0f} steps/s ({self.queued_after_submit} queued after "
            f"submission, at most {self.max_running} running at once)"
        )


def drain_playbooks(
    dispatcher: CeleryDispatcher,
    *,
    runs: int = 500,
    steps: int = 3,
    timeout_s: float = 120.0,
    poll_interval_s: float = 0.05,
) -> DrainResult:
    """Submit `runs` playbooks of `steps` `true` steps at once; wait until all ended."""
    text = true_playbook(steps)
    records = dispatcher.rt.records
    client = dispatcher.rt.redis
    keys = dispatcher.rt.keys
    t0 = time.monotonic()
    ids = [dispatcher.submit_playbook(text, source="batch.yml") for _ in range(runs)]
    submit_s = time.monotonic() - t0
    pipe = client.pipeline(transaction=False)
    for ex in ids:
        pipe.hget(keys.record(ex), "status")
    queued = sum(1 for s in pipe.execute() if s in (b"queued", "queued"))
    pending = list(ids)
    deadline = t0 + timeout_s
    max_running = 0
    while pending:
        pipe = client.pipeline(transaction=False)
        for ex in pending:
            pipe.hmget(keys.record(ex), ["completeId", "status"])
        polled = pipe.execute()
        pending = [ex for ex, (done, _) in zip(pending, polled, strict=True) if not done]
        running = sum(1 for _, status in polled if status in (b"running", "running"))
        max_running = max(max_running, running)
        if not pending:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} of {runs} playbooks not ended in {timeout_s} s")
        time.sleep(poll_interval_s)
    drain_s = time.monotonic() - t0
    statuses: dict[str, int] = {}
    for ex in ids:
        rec = records.get(ex)
        status = rec.status if rec is not None else "missing"
        statuses[status] = statuses.get(status, 0) + 1
    return DrainResult(runs, steps, submit_s, drain_s, queued, max_running, ids, statuses)


def history_problems(dispatcher: CeleryDispatcher, execution_id: str, steps: int) -> list[str]:
    """What is wrong with a completed run's history: ids 1..n, the playbook's event order."""
    rt = dispatcher.rt
    events = list(iter_history(rt.redis, rt.keys, execution_id))
    problems: list[str] = []
    ids = [e.id for e in events]
    if ids != list(range(1, len(ids) + 1)):
        problems.append(f"ids not contiguous: {ids}")
    names = [e.event for e in events if e.event != "execution_output"]
    expected = ["execution_started"]
    expected += ["playbook_step_start", "playbook_step_complete"] * steps
    expected += ["execution_complete"]
    if names != expected:
        problems.append(f"events {names}")
    done: list[dict[str, Any]] = payloads(events, "execution_complete")
    if not done or done[-1]["status"] != "completed":
        problems.append(f"ended {done}")
    return problems
