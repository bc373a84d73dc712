"""The history database's tables (SQLAlchemy Core), as migration 0001 creates them.

`executions`: one row per execution, every field of the record (CONTRACT §3) as a column for
searching, plus `record`, the record's wire JSON exactly as the relay served it from Redis (so
that serving it from here changes nothing, key order included: `JSON`, not `JSONB`, keeps the
text as written). `event_batches`: the history, many envelopes to a row (a row per event would
cost ~60 bytes of row overhead and an index entry per output chunk). `execution_hosts`: every
host an execution touched, for `host=` searches.

`saved_playbooks` (migration 0002): every version of every saved playbook (CONTRACT §10).
`schedules` (migration 0003): the schedules of saved playbooks (CONTRACT §10).
`api_tokens` (migration 0004): the relay's named tokens (CONTRACT §9), their secrets hashed.
`audit_log` (migration 0005): who did what (CONTRACT §9); the execution retention never
touches it.

A migration, not `metadata.create_all`, creates these in a database; tests/db check that the two
agree. Tables that §9 and §10 will add (tokens, audit, schedules) live in the same database and
come with their own migrations.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    false,
)
from sqlalchemy.types import TypeDecorator

# Constraint names are spelled out so that later migrations can name what they alter.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime in, a UTC-aware datetime out, on every dialect.

    PostgreSQL stores `timestamptz`. SQLite has no time zones: the value is stored as UTC in
    SQLAlchemy's fixed-width text form, so comparing the text compares the instants.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: history timestamps carry a time zone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


executions = Table(
    "executions",
    metadata,
    Column("execution_id", String(64), nullable=False),
    Column("command", Text, nullable=False),
    Column("command_type", String(32), nullable=False),
    Column("status", String(32), nullable=False),
    Column("options", JSON, nullable=False),
    # Never null: the list's order and cursor. A record without `queuedAt` gets its start time,
    # or the time it was first archived.
    Column("queued_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    Column("completed_at", UTCDateTime),
    Column("duration_ms", BigInteger),
    Column("exit_code", Integer),
    Column("error", Text),
    Column("worker", String(255)),
    Column("steps", JSON),
    Column("output_truncated", Boolean),
    Column("cancel_requested", Boolean),
    Column("submitted_by", String(255)),
    Column("cancelled_by", String(255)),
    Column("schedule_id", String(64)),
    Column("rerun_of", String(64)),
    Column("playbook_name", String(255)),
    Column("playbook_version", Integer),
    # What the worker runs (command or rendered playbook): a rerun needs it once Redis forgot it.
    Column("spec", JSON),
    # The record as the relay serves it (wire JSON, camelCase); see the module docstring.
    Column("record", JSON, nullable=False),
    # Lower-cased command and playbook name: `q` is a case-insensitive substring of these.
    Column("search_text", Text, nullable=False),
    # The id of execution_complete once the record has it (Redis `completeId`).
    Column("complete_id", BigInteger),
    # The highest event id stored in event_batches: the archiver resumes after it.
    Column("archived_through", BigInteger, nullable=False, server_default="0"),
    # True once complete_id is set and archived_through reached it: nothing left to archive.
    Column("archive_done", Boolean, nullable=False, server_default=false()),
    Column("archived_at", UTCDateTime, nullable=False),
    PrimaryKeyConstraint("execution_id"),
)

# Newest first, then by id: the list and its keyset cursor; each filter leads its own copy so
# that a filtered page is an index range too, not a scan.
Index("ix_executions_queued", executions.c.queued_at.desc(), executions.c.execution_id.desc())
for _col in ("status", "command_type", "submitted_by", "schedule_id"):
    Index(
        f"ix_executions_{_col}_queued",
        executions.c[_col],
        executions.c.queued_at.desc(),
        executions.c.execution_id.desc(),
    )
# `q` on PostgreSQL: LIKE '%...%' through a trigram index (pg_trgm). SQLite scans (no
# equivalent index; an embedded history is small).
POSTGRESQL_ONLY = frozenset({"ix_executions_search_trgm"})
Index(
    "ix_executions_search_trgm",
    executions.c.search_text,
    postgresql_using="gin",
    postgresql_ops={"search_text": "gin_trgm_ops"},
).ddl_if(dialect="postgresql")
# The archiver's work list: executions it has not finished with (a few among millions).
Index(
    "ix_executions_open",
    executions.c.execution_id,
    postgresql_where=executions.c.archive_done == false(),
    sqlite_where=executions.c.archive_done == false(),
)


def _execution_ref() -> Column[str]:
    """The `execution_id` of a table whose rows go with their execution's row."""
    return Column(
        "execution_id",
        String(64),
        ForeignKey("executions.execution_id", ondelete="CASCADE"),
        nullable=False,
    )


execution_hosts = Table(
    "execution_hosts",
    metadata,
    _execution_ref(),
    Column("host", String(255), nullable=False),
    PrimaryKeyConstraint("execution_id", "host"),
)
Index("ix_execution_hosts_host", execution_hosts.c.host, execution_hosts.c.execution_id)

# Codecs of event_batches.data. New batches are zstd; zlib ones (written before zstd) are read.
CODEC_PLAIN = 0
CODEC_ZLIB = 1
CODEC_ZSTD = 2

event_batches = Table(
    "event_batches",
    metadata,
    _execution_ref(),
    # Events first_id..last_id, every id in between: a gap in the history starts a new batch.
    Column("first_id", BigInteger, nullable=False),
    Column("last_id", BigInteger, nullable=False),
    Column("codec", SmallInteger, nullable=False),
    # The envelopes, newline-separated (an envelope's JSON holds no raw newline), maybe compressed.
    Column("data", LargeBinary, nullable=False),
    Column("raw_bytes", Integer, nullable=False),
    # (execution_id, first_id) makes a retried insert of the same batch a no-op.
    PrimaryKeyConstraint("execution_id", "first_id"),
)


# One row per save: versions 1, 2, ... of each name, never rewritten (a run names the version
# it ran, so an old version must stay what it was). Deleting a playbook deletes all its rows.
saved_playbooks = Table(
    "saved_playbooks",
    metadata,
    Column("name", String(255), nullable=False),
    Column("version", Integer, nullable=False),
    Column("yaml", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    # The saving token's name (CONTRACT §9); null until tokens have names.
    Column("created_by", String(255)),
    PrimaryKeyConstraint("name", "version"),
)


# Schedules (migration 0003, CONTRACT §10): the definitions' one truth; the schedulers'
# celery-redbeat entries in Redis are synced from these rows (worker/beat.py).
schedules = Table(
    "schedules",
    metadata,
    Column("id", String(32), nullable=False),
    Column("playbook_name", String(255), nullable=False),
    Column("params", JSON, nullable=False),
    Column("cron", String(255)),
    Column("timezone", String(64), nullable=False),
    Column("interval_s", Integer),
    Column("enabled", Boolean, nullable=False),
    # An interval's ticks are anchor + k * interval_s (events.schedules.Cadence); a cron's
    # first tick is the first after it.
    Column("anchor", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("created_by", String(255)),
    PrimaryKeyConstraint("id"),
)


# One row per token ever created (CONTRACT §9): revoking sets `revoked_at` and keeps the row, so
# a name is never reused and the audit log's actors stay unambiguous. Only the SHA-256 of the
# secret is kept (events.db.tokens says why SHA-256 suffices); the secret itself never is.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("name", String(128), primary_key=True),
    Column("secret_sha256", String(64), nullable=False, unique=True, index=True),
    Column("role", String(16), nullable=False),
    # Comma-separated queue names; null: every queue.
    Column("queues", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("created_by", String(255)),
    Column("expires_at", UTCDateTime),
    Column("revoked_at", UTCDateTime),
)


# One row per audited request (CONTRACT §9), numbered in the order written: the id is the
# listing's cursor. Never pruned with the executions.
audit_log = Table(
    "audit_log",
    metadata,
    # SQLite numbers rows itself only for an INTEGER primary key.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("at", UTCDateTime, nullable=False, index=True),
    Column("actor", String(255), nullable=False, index=True),
    Column("action", String(64), nullable=False, index=True),
    Column("target", String(255)),
    Column("outcome", String(32), nullable=False),
    Column("status", SmallInteger, nullable=False),
    Column("client", String(255), nullable=False),
)


def include_object_for(dialect: str) -> Callable[..., bool]:
    """Alembic's `include_object` hook: on other dialects, autogenerate and schema comparison
    skip what exists on PostgreSQL only (POSTGRESQL_ONLY; ddl_if above, `if pg` in migrations)."""

    def include(
        _obj: object, name: str | None, _type: str, _reflected: bool, _other: object
    ) -> bool:
        return dialect == "postgresql" or name not in POSTGRESQL_ONLY

    return include
