"""Named API tokens with roles, queue scopes and expiry, their secrets hashed (CONTRACT §9)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"


def upgrade() -> None:
    ts = sa.DateTime(timezone=True)
    op.create_table(
        "api_tokens",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("queues", sa.Text()),
        sa.Column("created_at", ts, nullable=False),
        sa.Column("created_by", sa.String(255)),
        sa.Column("expires_at", ts),
        sa.Column("revoked_at", ts),
        sa.PrimaryKeyConstraint("name", name="pk_api_tokens"),
    )
    op.create_index("ix_api_tokens_secret_sha256", "api_tokens", ["secret_sha256"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_api_tokens_secret_sha256", table_name="api_tokens")
    op.drop_table("api_tokens")
