"""The benchmark command still runs: one quick row end to end (real Redis), table and JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, live_pids_with

pytestmark = pytest.mark.integration


def test_quick_bus_row_prints_the_table_and_writes_json(tmp_path: Path, redis_url: str) -> None:
    argv = [sys.executable, "-m", "tests.benchmarks", "--quick", "--only", "bus"]
    argv += ["--out", str(tmp_path), "--no-plot", "--redis-url", redis_url]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "bus throughput vs raw pipe" in done.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    figures = {f["figure"]: f for f in results["figures"]}
    bus = figures["bus throughput vs raw pipe"]
    assert bus["error"] is None
    assert bus["ours"] > 0 and bus["baseline"] > 0
    assert bus["target"] == ">= 0.4x"
    assert figures["bus throughput vs naive streamer"]["baseline"] > 0


def test_quick_fleet_fanout_row_runs_on_real_workers(tmp_path: Path) -> None:
    """The fan-out row (3 workers when quick) on its own redis-server: every figure measured
    beside its baseline, every worker stopped."""
    argv = [sys.executable, "-m", "tests.benchmarks", "--quick", "--only", "fleet_fanout"]
    argv += ["--out", str(tmp_path), "--no-plot"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads((tmp_path / "results.json").read_text())["figures"]
    assert [f["figure"].split(" on 3 hosts")[0] for f in figures] == [
        "fan-out step of `true`",
        "fan-out step of `true`",
        "fan-out start skew",
        "fan-out start skew",
        "3-step fan-out playbook",
        "3-step fan-out playbook",
    ]
    for f in figures:
        assert f["error"] is None and f["ours"] > 0 and f["baseline"] > 0, f
    assert [f["target"] for f in figures if f["target"]] == ["<= 2x", "<= 50 ms", "<= 2000 ms"]
    # The row's workers are gone (a log each, named by its hostname, which has the run's id).
    hosts = [p.stem.split("-", 1)[1] for p in (tmp_path / "logs").glob("fleet_fanout-*.log")]
    assert len(hosts) == 3
    assert not any(live_pids_with(f"--hostname {h} ") for h in hosts)
