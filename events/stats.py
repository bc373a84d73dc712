"""Fleet-wide counters and histograms, kept in Redis so that every relay serves the same ones.

Counters (`<p>:stat:<name>`) are INCRed where the thing happens (events published: by the
publish rules; clients dropped: by the relay). The histograms of execution duration and of
queue wait are observed once per execution, when its `execution_complete` got its id: the
publish rules give exactly one event that, fleet-wide, so nothing is counted twice. A histogram
is a hash `<p>:stat:hist:<name>` with a count per bucket (`b0`, `b1`, ... not cumulative),
`count` and `sum` (seconds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from events.keys import Keys
from events.models import parse_time
from events.records import decode_hash
from events.vocabulary import RecordField

F = RecordField


@dataclass(frozen=True)
class HistogramSpec:
    name: str
    help: str
    buckets_s: tuple[float, ...]  # upper bounds; +Inf is implied

    @property
    def key_suffix(self) -> str:
        return f"hist:{self.name}"

    def bucket_of(self, value_s: float) -> int:
        for i, bound in enumerate(self.buckets_s):
            if value_s <= bound:
                return i
        return len(self.buckets_s)

    def cumulative(self, raw: Mapping[str, str]) -> tuple[list[tuple[str, float]], float]:
        """Prometheus' cumulative buckets (`le` labels, `+Inf` last) and the sum, from a hash."""
        running = 0.0
        out: list[tuple[str, float]] = []
        for i, bound in enumerate((*self.buckets_s, math.inf)):
            running += float(raw.get(f"b{i}", 0))
            out.append(("+Inf" if bound == math.inf else f"{bound:g}", running))
        return out, float(raw.get("sum", 0))


EXECUTION_DURATION = HistogramSpec(
    "cloudops_execution_duration_seconds",
    "Executions by how long they ran (started to completed), every status.",
    (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600),
)
QUEUE_WAIT = HistogramSpec(
    "cloudops_execution_queue_wait_seconds",
    "Executions by how long they waited queued before a worker started them.",
    (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
FLEET_HISTOGRAMS = (EXECUTION_DURATION, QUEUE_WAIT)


def _observe(pipe: Any, keys: Keys, spec: HistogramSpec, value_s: float) -> None:
    key = keys.stat(spec.key_suffix)
    pipe.hincrby(key, f"b{spec.bucket_of(value_s)}", 1)
    pipe.hincrby(key, "count", 1)
    pipe.hincrbyfloat(key, "sum", value_s)


def observe_completion(client: redis.Redis, keys: Keys, execution_id: str) -> None:
    """Count an ended execution in the fleet's histograms (call once: see the module doc)."""
    raw = decode_hash(client.hgetall(keys.record(execution_id)))
    pipe = client.pipeline(transaction=False)
    if raw.get(F.DURATION_MS):
        _observe(pipe, keys, EXECUTION_DURATION, int(raw[F.DURATION_MS]) / 1000)
    if raw.get(F.QUEUED_AT) and raw.get(F.STARTED_AT):
        wait = parse_time(raw[F.STARTED_AT]) - parse_time(raw[F.QUEUED_AT])
        _observe(pipe, keys, QUEUE_WAIT, max(0.0, wait.total_seconds()))
    pipe.execute()


def histogram_keys(keys: Keys, specs: Sequence[HistogramSpec] = FLEET_HISTOGRAMS) -> list[str]:
    return [keys.stat(s.key_suffix) for s in specs]
