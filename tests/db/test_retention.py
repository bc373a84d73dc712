"""Retention (events.db.retention.prune): age and the newest MIN_KEEP, children included, and
one pruner at a time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import Engine, func, select

from events.db.archive import Archiver
from events.db.engine import try_lock_session, unlock_session, write_connection
from events.db.query import History
from events.db.retention import prune
from events.db.schema import event_batches, execution_hosts, executions
from events.settings import Settings
from tests.db.publish import Scenario
from tests.db.seed import Row, insert_rows

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def count(engine: Engine, table: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def remaining(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(executions.c.execution_id).order_by(
                    executions.c.queued_at.desc(), executions.c.execution_id.desc()
                )
            ).scalars()
        )


def test_keeps_exactly_the_newest_min_keep_when_everything_is_old(engine: Engine) -> None:
    # 2,500 executions from 200 to ~300 days old; pairs share a queued_at (the id decides).
    rows = [
        Row(
            f"ex_{i:05d}",
            NOW - timedelta(days=200, minutes=(2500 - i) // 2),
            worker=None,
            hosts=[f"h{i % 7}"],
        )
        for i in range(2500)
    ]
    insert_rows(engine, rows)
    newest = sorted(rows, key=lambda r: (r.queued_at, r.execution_id), reverse=True)
    deleted = prune(engine, retention_days=90, min_keep=1000, now=NOW, chunk=333)
    assert deleted == 1500
    assert remaining(engine) == [r.execution_id for r in newest[:1000]]
    assert count(engine, execution_hosts) == 1000
    assert prune(engine, retention_days=90, min_keep=1000, now=NOW) == 0


def test_deletes_by_age_only_beyond_min_keep(engine: Engine) -> None:
    young = [Row(f"ex_y{i}", NOW - timedelta(days=10, seconds=i)) for i in range(5)]
    old = [Row(f"ex_o{i}", NOW - timedelta(days=100, seconds=i)) for i in range(5)]
    insert_rows(engine, young + old)
    assert prune(engine, retention_days=90, min_keep=3, now=NOW) == 5
    assert remaining(engine) == [r.execution_id for r in young]
    # min_keep 0: age alone.
    insert_rows(engine, [Row("ex_old", NOW - timedelta(days=91))])
    assert prune(engine, retention_days=90, min_keep=0, now=NOW) == 1
    # Fewer than min_keep in all: nothing goes, whatever the age.
    assert prune(engine, retention_days=1, min_keep=10, now=NOW + timedelta(days=400)) == 0
    assert len(remaining(engine)) == 5


def test_an_archived_execution_goes_with_its_batches_and_hosts(
    rclient: redis.Redis, settings: Settings, engine: Engine
) -> None:
    scene = Scenario(rclient, settings)
    try:
        ex = scene.command("echo old", [("stdout", f"{i}\n") for i in range(50)])
        scene.flush()
        Archiver(rclient, scene.keys, engine).run_once()
    finally:
        scene.close()
    assert count(engine, event_batches) > 0 and count(engine, execution_hosts) > 0
    assert (
        prune(engine, retention_days=90, min_keep=0, now=datetime.now(UTC) + timedelta(days=91))
        == 1
    )
    assert History(engine).get_record(ex) is None
    assert count(engine, event_batches) == count(engine, execution_hosts) == 0


# SQLite serialises writers on the file: it has no lock of this kind to hold.
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_one_pruner_at_a_time(engine: Engine) -> None:
    insert_rows(engine, [Row("ex_old", NOW - timedelta(days=100))])
    with write_connection(engine) as other:
        assert try_lock_session(other, "retention-prune")
        try:
            assert prune(engine, retention_days=90, min_keep=0, now=NOW) == 0
        finally:
            unlock_session(other, "retention-prune")
    assert prune(engine, retention_days=90, min_keep=0, now=NOW) == 1
