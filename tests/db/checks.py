"""Invariants of stored histories, checked in the database itself (SQL, not through the code
under test)."""

from __future__ import annotations

from sqlalchemy import Engine, text


def assert_batches_exact(engine: Engine) -> dict[str, int]:
    """No two batches of an execution overlap, each execution's batches cover 1..last with no
    hole, and its archived_through is that last id. Returns execution id -> last id."""
    with engine.connect() as conn:
        overlaps = conn.execute(
            text(
                "SELECT count(*) FROM event_batches a JOIN event_batches b"
                " ON a.execution_id = b.execution_id AND a.first_id < b.first_id"
                " AND b.first_id <= a.last_id"
            )
        ).scalar_one()
        assert overlaps == 0, f"{overlaps} overlapping batches"
        rows = conn.execute(
            text(
                "SELECT e.execution_id, e.archived_through, min(b.first_id), max(b.last_id),"
                " coalesce(sum(b.last_id - b.first_id + 1), 0)"
                " FROM executions e LEFT JOIN event_batches b ON b.execution_id = e.execution_id"
                " GROUP BY e.execution_id, e.archived_through"
            )
        ).all()
    out: dict[str, int] = {}
    for ex, through, first, last, count in rows:
        if count == 0:
            assert through == 0, f"{ex}: archived_through {through} without batches"
        else:
            assert first == 1, f"{ex}: first stored id {first}"
            assert count == last, f"{ex}: {count} events stored for ids 1..{last}: a hole"
            assert through == last, f"{ex}: archived_through {through}, last stored {last}"
        out[ex] = int(through)
    return out
