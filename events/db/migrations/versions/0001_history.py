"""History of executions: records, event batches, hosts (CONTRACT §8)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None

_NEWEST_FIRST = [sa.text("queued_at DESC"), sa.text("execution_id DESC")]


def _cascade_from_execution(table: str) -> sa.ForeignKeyConstraint:
    """The foreign key of a table whose rows go with their execution's row."""
    return sa.ForeignKeyConstraint(
        ["execution_id"],
        ["executions.execution_id"],
        name=f"fk_{table}_execution_id_executions",
        ondelete="CASCADE",
    )


def upgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    if pg:
        # Trusted since PostgreSQL 13: the database's owner may create it.
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "executions",
        sa.Column("execution_id", sa.String(64), nullable=False),
        sa.Column("command", sa.Text(), nullable=False),
        sa.Column("command_type", sa.String(32), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("queued_at", ts, nullable=False),
        sa.Column("started_at", ts),
        sa.Column("completed_at", ts),
        sa.Column("duration_ms", sa.BigInteger()),
        sa.Column("exit_code", sa.Integer()),
        sa.Column("error", sa.Text()),
        sa.Column("worker", sa.String(255)),
        sa.Column("steps", sa.JSON()),
        sa.Column("output_truncated", sa.Boolean()),
        sa.Column("cancel_requested", sa.Boolean()),
        sa.Column("submitted_by", sa.String(255)),
        sa.Column("cancelled_by", sa.String(255)),
        sa.Column("schedule_id", sa.String(64)),
        sa.Column("rerun_of", sa.String(64)),
        sa.Column("playbook_name", sa.String(255)),
        sa.Column("playbook_version", sa.Integer()),
        sa.Column("spec", sa.JSON()),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("search_text", sa.Text(), nullable=False),
        sa.Column("complete_id", sa.BigInteger()),
        sa.Column("archived_through", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("archive_done", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("archived_at", ts, nullable=False),
        sa.PrimaryKeyConstraint("execution_id", name="pk_executions"),
    )
    op.create_index("ix_executions_queued", "executions", _NEWEST_FIRST)
    for col in ("status", "command_type", "submitted_by", "schedule_id"):
        op.create_index(f"ix_executions_{col}_queued", "executions", [col, *_NEWEST_FIRST])
    if pg:
        op.create_index(
            "ix_executions_search_trgm",
            "executions",
            ["search_text"],
            postgresql_using="gin",
            postgresql_ops={"search_text": "gin_trgm_ops"},
        )
    op.create_index(
        "ix_executions_open",
        "executions",
        ["execution_id"],
        postgresql_where=sa.text("archive_done = false"),
        sqlite_where=sa.text("archive_done = 0"),
    )
    op.create_table(
        "execution_hosts",
        sa.Column("execution_id", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        _cascade_from_execution("execution_hosts"),
        sa.PrimaryKeyConstraint("execution_id", "host", name="pk_execution_hosts"),
    )
    op.create_index("ix_execution_hosts_host", "execution_hosts", ["host", "execution_id"])
    op.create_table(
        "event_batches",
        sa.Column("execution_id", sa.String(64), nullable=False),
        sa.Column("first_id", sa.BigInteger(), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("codec", sa.SmallInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("raw_bytes", sa.Integer(), nullable=False),
        _cascade_from_execution("event_batches"),
        sa.PrimaryKeyConstraint("execution_id", "first_id", name="pk_event_batches"),
    )


def downgrade() -> None:
    op.drop_table("event_batches")
    op.drop_table("execution_hosts")
    op.drop_table("executions")
