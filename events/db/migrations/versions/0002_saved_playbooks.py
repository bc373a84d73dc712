"""Saved playbooks, every version kept (CONTRACT §10)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"


def upgrade() -> None:
    op.create_table(
        "saved_playbooks",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("yaml", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(255)),
        sa.PrimaryKeyConstraint("name", "version", name="pk_saved_playbooks"),
    )


def downgrade() -> None:
    op.drop_table("saved_playbooks")
