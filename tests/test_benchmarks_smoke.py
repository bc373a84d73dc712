"""The benchmark command still runs: one quick row end to end (real Redis), table and JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

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
