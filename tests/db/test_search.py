"""Search (events.db.query.History.search): every filter, q, time windows, and cursor pages
that neither repeat nor skip a row, newest first, on both databases."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import Engine

from events.db.archive import Archiver
from events.db.query import History, _has_trigram, decode_cursor, encode_cursor
from events.errors import InvalidRequestError
from events.settings import Settings
from tests.db.publish import Scenario
from tests.db.seed import Row, insert_rows

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def ids(records: list[dict[str, object]]) -> list[object]:
    return [r["executionId"] for r in records]


@pytest.fixture
def history(engine: Engine) -> History:
    insert_rows(
        engine,
        [
            Row("ex_a", T0, "aws ec2 describe-instances --region eu-west-1", "aws_cli"),
            Row("ex_b", T0 + timedelta(minutes=1), "./Rotate-Logs.sh --keep 7", status="failed"),
            Row(
                "ex_c",
                T0 + timedelta(minutes=2),
                "Deploy Web",
                "playbook",
                hosts=["web1@eu", "web2@eu"],
            ),
            Row(
                "ex_d",
                T0 + timedelta(minutes=3),
                "tail -f app.log",
                status="running",
                submitted_by="alice",
            ),
            Row("ex_e", T0 + timedelta(minutes=4), "./later.sh", status="queued", worker=None),
            Row("ex_f", T0 + timedelta(minutes=5), "echo 100%_done", submitted_by="bob"),
        ],
    )
    return History(engine)


def test_no_filter_lists_everything_newest_first_running_and_queued_included(
    history: History,
) -> None:
    records, cursor = history.search()
    assert ids(records) == ["ex_f", "ex_e", "ex_d", "ex_c", "ex_b", "ex_a"]
    assert cursor is None
    assert {r["status"] for r in records} >= {"running", "queued"}


def test_each_filter(history: History) -> None:
    assert ids(history.search(status="failed")[0]) == ["ex_b"]
    assert ids(history.search(status="running")[0]) == ["ex_d"]
    assert ids(history.search(command_type="aws_cli")[0]) == ["ex_a"]
    assert ids(history.search(command_type="playbook")[0]) == ["ex_c"]
    assert ids(history.search(host="web2@eu")[0]) == ["ex_c"]
    assert ids(history.search(host="w1@test")[0]) == ["ex_f", "ex_d", "ex_c", "ex_b", "ex_a"]
    assert ids(history.search(host="nowhere")[0]) == []
    assert ids(history.search(submitted_by="alice")[0]) == ["ex_d"]
    assert ids(history.search(status="completed", submitted_by="bob")[0]) == ["ex_f"]
    assert ids(history.search(status="failed", command_type="aws_cli")[0]) == []


def test_q_is_a_case_insensitive_substring_of_the_command_or_playbook_name(
    history: History,
) -> None:
    assert ids(history.search(q="DESCRIBE-inst")[0]) == ["ex_a"]
    assert ids(history.search(q="rotate-logs")[0]) == ["ex_b"]
    assert ids(history.search(q="deploy web")[0]) == ["ex_c"]
    assert ids(history.search(q=".sh")[0]) == ["ex_e", "ex_b"]
    # LIKE's wildcards are plain characters in q.
    assert ids(history.search(q="100%_")[0]) == ["ex_f"]
    assert ids(history.search(q="%")[0]) == ["ex_f"]
    assert ids(history.search(q="_")[0]) == ["ex_f"]
    assert ids(history.search(q="no such thing")[0]) == []


def test_since_is_inclusive_until_exclusive(history: History) -> None:
    since = T0 + timedelta(minutes=1)
    until = T0 + timedelta(minutes=3)
    assert ids(history.search(since=since, until=until)[0]) == ["ex_c", "ex_b"]
    # RFC 3339 text, with any offset, means the same instant.
    text_since = (since.astimezone(UTC) + timedelta(hours=0)).isoformat().replace("+00:00", "Z")
    local_until = until.astimezone(datetime.now().astimezone().tzinfo).isoformat()
    assert ids(history.search(since=text_since, until=local_until)[0]) == ["ex_c", "ex_b"]
    assert ids(history.search(since=T0 + timedelta(minutes=5))[0]) == ["ex_f"]
    assert ids(history.search(until=T0)[0]) == []


def test_bad_arguments_name_their_field(history: History) -> None:
    for bad in ("junk", encode_cursor(T0, "ex_a")[:-3], "eyJ4IjoxfQ"):
        with pytest.raises(InvalidRequestError) as info:
            history.search(cursor=bad)
        assert info.value.field == "cursor"
    for limit in (0, 501):
        with pytest.raises(InvalidRequestError, match="limit"):
            history.search(limit=limit)
    with pytest.raises(InvalidRequestError, match="since"):
        history.search(since="yesterday")
    with pytest.raises(InvalidRequestError, match="until"):
        history.search(until=datetime(2026, 1, 1))


def test_cursor_round_trip() -> None:
    at = T0 + timedelta(microseconds=7)
    assert decode_cursor(encode_cursor(at, "ex_x")) == (at, "ex_x")
    assert "=" not in encode_cursor(at, "ex_x")


def test_pages_over_thousands_of_rows_neither_repeat_nor_skip(engine: Engine) -> None:
    rng = random.Random(7)
    rows = []
    for i in range(1234):
        # Many executions share a queued_at: the id breaks ties, in the order and the cursor.
        at = T0 + timedelta(seconds=rng.randint(0, 300))
        status = rng.choice(["completed", "failed", "running"])
        rows.append(
            Row(f"ex_{i:05d}", at, f"job {i} {'Backup' if i % 3 == 0 else 'sync'}", status=status)
        )
    insert_rows(engine, rows)
    history = History(engine)
    expected = sorted(rows, key=lambda r: (r.queued_at, r.execution_id), reverse=True)

    for limit, filters in (
        (50, {}),
        (7, {}),
        (500, {}),
        (33, {"q": "backup"}),
        (41, {"status": "running"}),
    ):
        want = [
            r.execution_id
            for r in expected
            if ("q" not in filters or "backup" in r.command.lower())
            and ("status" not in filters or r.status == filters["status"])
        ]
        got: list[object] = []
        cursor = None
        pages = 0
        while True:
            page, cursor = history.search(limit=limit, cursor=cursor, **filters)
            assert len(page) <= limit
            got += ids(page)
            pages += 1
            if cursor is None:
                break
            assert len(page) == limit
        assert got == want, (limit, filters)
        assert pages == -(-len(want) // limit)


def test_rows_added_while_paging_do_not_shift_the_pages(engine: Engine) -> None:
    insert_rows(engine, [Row(f"ex_{i:03d}", T0 + timedelta(seconds=i)) for i in range(100)])
    history = History(engine)
    first, cursor = history.search(limit=30)
    insert_rows(engine, [Row(f"ex_new{i}", T0 + timedelta(days=1, seconds=i)) for i in range(10)])
    rest: list[object] = []
    while cursor:
        page, cursor = history.search(limit=30, cursor=cursor)
        rest += ids(page)
    assert ids(first) + rest == [f"ex_{i:03d}" for i in range(99, -1, -1)]


def test_archived_executions_are_found_running_ones_included(
    rclient: redis.Redis, settings: Settings, engine: Engine
) -> None:
    scene = Scenario(rclient, settings)
    try:
        done = scene.playbook("Nightly Backup", [("dump", "Dump", ["ok\n"]), ("ship", "Ship", [])])
        running = scene.command("pg_dump --verbose", [("stdout", "..\n")], end=False)
        scene.flush()
        Archiver(rclient, scene.keys, engine).run_once()
    finally:
        scene.close()
    history = History(engine)
    assert ids(history.search(q="nightly")[0]) == [done]
    assert ids(history.search(host="w2@test")[0]) == [done]
    assert ids(history.search(status="running")[0]) == [running]
    assert ids(history.search()[0]) == [running, done]


def test_q_without_a_trigram_is_kept_off_the_trigram_index() -> None:
    """pg_trgm reads its whole index for a pattern without a 3-character word (seconds at a
    million rows): such a q is matched by a scan instead (tests/benchmarks/archive.py)."""
    assert [_has_trigram(q) for q in ("ls", "s3://", "a-b-c", "-v", "")] == [False] * 5
    assert [_has_trigram(q) for q in ("abc", "x-abc", "日本語", "s3 ls bucket")] == [True] * 4
