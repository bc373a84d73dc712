"""The list's filters and the merge of the database's page with Redis's live records
(events.db.search), against a real History on both dialects: pages newest first with no
duplicate and no gap, live status winning, live-only records joining, bad filters named."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from events.db.query import History
from events.db.search import BadFiltersError, SearchFilter, cursor_key, merge_page, page_of
from events.errors import InvalidRequestError
from tests.db.seed import Row, insert_rows, rfc3339

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _wire(ex: str, at: datetime, status: str, command: str) -> dict[str, Any]:
    return {
        "executionId": ex,
        "command": command,
        "commandType": "script",
        "status": status,
        "options": {},
        "queuedAt": rfc3339(at),
    }


def _pages(
    history: History, live: dict[str, dict[str, Any]], filt: SearchFilter, limit: int
) -> list[str]:
    out: list[str] = []
    cursor: str | None = None
    for _ in range(1000):
        below = cursor_key(cursor)
        stored, stored_next = history.search(limit=limit, cursor=cursor, **filt.sql_args())
        visible = {k: w for k, w in live.items() if below is None or _key(w) < below}
        page, cursor = merge_page(stored, stored_next, visible, filt, limit, below)
        out += [w["executionId"] for w in page]
        if cursor is None:
            return out
    raise AssertionError("no last page")


def _key(w: dict[str, Any]) -> tuple[datetime, str]:
    return datetime.fromisoformat(w["queuedAt"].replace("Z", "+00:00")), w["executionId"]


@pytest.mark.parametrize("limit", [1, 7, 50, 500])
def test_pages_merge_live_records_without_duplicate_or_gap(engine: Engine, limit: int) -> None:
    rng = random.Random(limit)
    # 300 archived (some sharing a queued time), then 40 queued a moment ago, only in Redis.
    stored = [
        Row(f"ex_{i:04d}", T0 + timedelta(seconds=i // 3), command=f"job {i}", status="queued")
        for i in range(300)
    ]
    insert_rows(engine, stored)
    live = {
        r.execution_id: _wire(r.execution_id, r.queued_at, "running", r.command)
        for r in rng.sample(stored, 60)
    }
    for i in range(300, 340):
        ex = f"ex_{i:04d}"
        live[ex] = _wire(ex, T0 + timedelta(seconds=i // 3), "queued", f"job {i}")
    history = History(engine)
    everything = sorted(
        [
            _wire(r.execution_id, r.queued_at, "queued", r.command)
            for r in stored
            if r.execution_id not in live
        ]
        + list(live.values()),
        key=_key,
        reverse=True,
    )
    assert _pages(history, live, SearchFilter(), limit) == [w["executionId"] for w in everything]
    # A filter on the live status: the database's stale "queued" copies do not show.
    running = SearchFilter(status="running")
    assert _pages(history, live, running, limit) == [
        w["executionId"] for w in everything if w["status"] == "running"
    ]
    queued = SearchFilter(status="queued", q="JOB 3")
    assert _pages(history, live, queued, limit) == [
        w["executionId"] for w in everything if w["status"] == "queued" and "job 3" in w["command"]
    ]


def test_redis_only_pages_follow_the_same_key() -> None:
    records = [
        _wire(f"ex_{i:03d}", T0 + timedelta(seconds=i % 50), "failed", "x") for i in range(120)
    ]
    out: list[str] = []
    cursor: str | None = None
    while True:
        page, cursor = page_of(records, SearchFilter(), 13, cursor_key(cursor))
        out += [w["executionId"] for w in page]
        if cursor is None:
            break
    assert out == [w["executionId"] for w in sorted(records, key=_key, reverse=True)]


def test_bad_filters_are_each_named() -> None:
    with pytest.raises(BadFiltersError) as e:
        SearchFilter.from_query(
            {"status": "done", "commandType": "bash", "since": "yesterday", "until": "2026"}
        )
    text = str(e.value)
    for name in ("status", "commandType", "since", "until"):
        assert f"{name}: " in text, text
    assert e.value.field == "status"
    with pytest.raises(InvalidRequestError, match="since"):
        SearchFilter.from_query({"since": "2026-03-01T00:00:00"})  # no time zone
    ok = SearchFilter.from_query(
        {"since": "2026-03-01T00:00:00Z", "until": "2026-03-02T00:00:00+02:00"}
    )
    assert ok.since == T0 and ok.until == datetime(2026, 3, 1, 22, tzinfo=UTC)
