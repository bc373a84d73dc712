"""Schedules of saved playbooks (CONTRACT §10)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("playbook_name", sa.String(255), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("cron", sa.String(255)),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("interval_s", sa.Integer()),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("anchor", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(255)),
        sa.PrimaryKeyConstraint("id", name="pk_schedules"),
    )


def downgrade() -> None:
    op.drop_table("schedules")
