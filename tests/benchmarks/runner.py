"""The benchmark command: run the rows, print the table, write results.json and results.png.

python -m tests.benchmarks [--quick] [--only ROW ...] [--out DIR] [--list]
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import subprocess
import sys
import time
import traceback
import uuid
from datetime import UTC, datetime
from pathlib import Path

from tests.benchmarks.core import ROWS, Context, Figure, Row
from tests.benchmarks.report import table, write_json, write_png
from tests.helpers import REPO

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Importing these registers their rows; the table follows this order.
ROW_MODULES = (
    "throughput",
    "latency",
    "sparse",
    "latency_fleet",
    "cancel",
    "dispatch",
    "fanout",
    "memory",
    "batch",
    "relay",
    "roles",
    "ha",
    "archive",
    "bus_archiving",
)


def load_rows() -> None:
    for name in ROW_MODULES:
        importlib.import_module(f"tests.benchmarks.{name}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tests.benchmarks",
        description="Measure every figure beside its baseline, in one run.",
    )
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not figures")
    p.add_argument("--only", nargs="+", metavar="ROW", help="run only these rows (see --list)")
    p.add_argument("--out", type=Path, default=REPO / "bench-results", help="results folder")
    p.add_argument(
        "--redis-url",
        default=os.environ.get("CLOUDOPS_TEST_REDIS_URL", DEFAULT_REDIS_URL),
        help="the Redis every row uses, each under a key prefix of its own",
    )
    p.add_argument("--no-plot", action="store_true", help="skip results.png")
    p.add_argument("--list", action="store_true", help="list the rows and exit")
    args = p.parse_args(argv)
    unknown = sorted(set(args.only or ()) - set(ROWS))
    if unknown:
        p.error(f"unknown row(s): {', '.join(unknown)}; known: {', '.join(ROWS)}")
    return args


def run_row(ctx: Context, r: Row) -> list[Figure]:
    missing = r.missing()
    if r.run is None or missing:
        waiting = ", ".join(missing) or "its benchmark code"
        note = f"pending (issue {r.issue}): waits for {waiting}"
        return [Figure(r.title, "", None, note=note, row=r.name)]
    try:
        figures = r.run(ctx)
    except Exception as e:
        traceback.print_exc()
        return [Figure(r.title, "", None, row=r.name, error=f"{type(e).__name__}: {e}")]
    for f in figures:
        f.row = r.name
    return figures


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
    except OSError:
        return "?"
    return out.stdout.strip() or "?"


def main(argv: list[str] | None = None) -> int:
    load_rows()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.list:
        for r in ROWS.values():
            state = "" if r.run is not None and not r.missing() else "  [pending]"
            print(f"{r.name:<20} issue {r.issue}: {r.title}{state}")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        quick=args.quick,
        redis_url=args.redis_url,
        out_dir=args.out,
        run_id=uuid.uuid4().hex[:8],
    )
    selected = [ROWS[n] for n in args.only] if args.only else list(ROWS.values())
    t_start = time.monotonic()
    figures: list[Figure] = []
    timings: dict[str, float] = {}
    for r in selected:
        print(f"[bench] {r.name}: {r.title} ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        figures += run_row(ctx, r)
        timings[r.name] = round(time.monotonic() - t0, 1)
        print(f"[bench] {r.name}: {timings[r.name]} s", file=sys.stderr, flush=True)
    elapsed_s = time.monotonic() - t_start
    meta = {
        "startedAt": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "quick": ctx.quick,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "loadAverage": os.getloadavg(),
        "python": platform.python_version(),
        "rowSeconds": timings,
        "elapsedSeconds": round(elapsed_s, 1),
    }
    print()
    print(table(figures))
    print()
    json_path = write_json(ctx, figures, meta)
    title = f"cloudops benchmarks {meta['startedAt']} commit {meta['commit']}"
    png_path = None if args.no_plot else write_png(ctx, title + (" (quick)" if ctx.quick else ""))
    print(f"results: {json_path}")
    if png_path is not None:
        print(f"plot:    {png_path}")
    elif not args.no_plot:
        print("plot:    skipped (matplotlib is not installed)")
    print(f"took {elapsed_s:.0f} s; load average {meta['loadAverage']}")
    return 1 if any(f.error for f in figures) else 0
