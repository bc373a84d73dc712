"""What every benchmark row shares: the registry of rows, the figures they report, the run's
context (sizes, output folder, samples for the plot), and percentiles.

A row is a function `(Context) -> list[Figure]` registered under a short name with `@row`;
`--only NAME` runs it alone, so a row starts and stops everything it needs itself. A `slot` is a
row whose code waits for another part of the system: it shows in the table as pending until the
module it needs exists and its function is filled in.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class Target:
    """`ours <op> value`, or with `relative` the ratio ours / baseline compared with value."""

    op: Literal["<=", ">="]
    value: float
    relative: bool = False
    unit: str = ""

    def met(self, ours: float | None, baseline: float | None) -> bool | None:
        if ours is None:
            return None
        if self.relative:
            if not baseline:
                return None
            subject = ours / baseline
        else:
            subject = ours
        return subject <= self.value if self.op == "<=" else subject >= self.value

    def __str__(self) -> str:
        if self.relative:
            return f"{self.op} {self.value:g}x"
        return f"{self.op} {self.value:g} {self.unit}".rstrip()


@dataclass
class Figure:
    """One line of the table: our figure beside its baseline measured in the same run."""

    figure: str
    unit: str
    ours: float | None
    baseline: float | None = None
    baseline_name: str = ""
    baseline_unit: str | None = None  # when it differs from `unit`
    target: Target | None = None
    note: str = ""
    row: str = ""
    error: str | None = None

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.baseline:
            return None
        return self.ours / self.baseline

    @property
    def met(self) -> bool | None:
        if self.error is not None:
            return False
        return None if self.target is None else self.target.met(self.ours, self.baseline)

    def as_json(self) -> dict[str, object]:
        return {
            "row": self.row,
            "figure": self.figure,
            "unit": self.unit,
            "ours": self.ours,
            "baseline": self.baseline,
            "baselineName": self.baseline_name,
            "baselineUnit": self.baseline_unit or self.unit,
            "ratio": self.ratio,
            "target": str(self.target) if self.target else None,
            "met": self.met,
            "note": self.note,
            "error": self.error,
        }


@dataclass
class Context:
    """One run of the benchmark command."""

    quick: bool
    redis_url: str
    out_dir: Path
    run_id: str
    # Latency samples (ms) and throughputs (MB/s) by series name, for the JSON and the plot.
    latency_ms: dict[str, list[float]] = field(default_factory=dict)
    throughput_mb_s: dict[str, float] = field(default_factory=dict)

    def pick(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def key_prefix(self, row_name: str) -> str:
        """A prefix of our own on the shared Redis, one per row and run."""
        return f"bench-{self.run_id}-{row_name}"

    @property
    def log_dir(self) -> Path:
        d = self.out_dir / "logs"
        d.mkdir(parents=True, exist_ok=True)
        return d


RowFn = Callable[[Context], list[Figure]]


@dataclass(frozen=True)
class Row:
    name: str
    issue: int
    title: str
    run: RowFn | None
    # Modules this row needs; while one is missing the row is a pending slot.
    needs: tuple[str, ...] = ()

    def missing(self) -> list[str]:
        return [m for m in self.needs if importlib.util.find_spec(m) is None]


ROWS: dict[str, Row] = {}


def row(
    name: str, *, issue: int, title: str, needs: Sequence[str] = ()
) -> Callable[[RowFn], RowFn]:
    def register(fn: RowFn) -> RowFn:
        ROWS[name] = Row(name, issue, title, fn, tuple(needs))
        return fn

    return register


def slot(name: str, *, issue: int, title: str, needs: Sequence[str]) -> None:
    """Reserve a row for code that other parts of the system will provide."""
    ROWS[name] = Row(name, issue, title, None, tuple(needs))


# -- statistics ------------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not samples:
        return math.nan
    xs = sorted(samples)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def alternate(
    runs: int, first: Callable[[], float], second: Callable[[], float], *, warmup: int = 0
) -> tuple[list[float], list[float]]:
    """The samples of `first` and of `second`, called in turns `warmup + runs` times so that
    both see the same machine (on 2 shared cores a rate drifts by a third from one second to
    the next); the first `warmup` turns are dropped."""
    firsts: list[float] = []
    seconds: list[float] = []
    for n in range(warmup + runs):
        a, b = first(), second()
        if n >= warmup:
            firsts.append(a)
            seconds.append(b)
    return firsts, seconds


def percentile_figures(
    what: str,
    ours: Sequence[float],
    baseline: Sequence[float],
    baseline_name: str,
    *,
    detail: str = "",
    qs: Sequence[int] = (50, 99),
    target: Target | None = None,
    note: str = "",
    on: int = 99,
) -> list[Figure]:
    """A figure "`what` pQ, `detail`" (ms) for each percentile Q in `qs`, ours beside the
    baseline's; `target` and `note` go on the one of percentile `on`."""
    return [
        Figure(
            f"{what} p{q}" + (f", {detail}" if detail else ""),
            "ms",
            percentile(ours, q),
            percentile(baseline, q),
            baseline_name,
            target=target if q == on else None,
            note=note if q == on else "",
        )
        for q in qs
    ]


def mb_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6 if seconds > 0 else math.inf


def wait_for(
    predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.005
) -> None:
    """Poll until `predicate` is truthy; TimeoutError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)
