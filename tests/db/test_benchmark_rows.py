"""The `archive`, `search` and `bus-archiving` benchmark rows still run (quick sizes): figures,
no error."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.benchmarks.archive import archive_row, search_row
from tests.benchmarks.bus_archiving import bus_archiving_row
from tests.benchmarks.core import Context

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_quick_archive_and_search_rows(tmp_path: Path, redis_url: str) -> None:
    ctx = Context(quick=True, redis_url=redis_url, out_dir=tmp_path, run_id=uuid.uuid4().hex[:8])
    figures = {f.figure: f for f in archive_row(ctx) + search_row(ctx)}
    archive = figures["archive throughput vs raw COPY"]
    assert archive.ours and archive.baseline and archive.target is not None
    assert str(archive.target) == ">= 0.5x"
    search = figures["search(q) p99"]
    assert search.ours is not None and str(search.target) == "<= 50 ms"
    assert all(f.error is None for f in figures.values())


def test_quick_bus_archiving_row(tmp_path: Path, redis_url: str) -> None:
    ctx = Context(quick=True, redis_url=redis_url, out_dir=tmp_path, run_id=uuid.uuid4().hex[:8])
    (figure,) = bus_archiving_row(ctx)
    assert figure.ours and figure.baseline and str(figure.target) == ">= 0.4x"
    assert figure.error is None
