"""Private PostgreSQL databases for tests and benchmarks: created under a unique name through
an admin URL, dropped after (only names we made)."""

from __future__ import annotations

import os
import uuid

from sqlalchemy import Table, text

from events.db.engine import make_engine

# A role that may CREATE DATABASE.
PG_ADMIN_URL = os.environ.get(
    "CLOUDOPS_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
PREFIX = "cloudops_test_"


def create_pg_database(tag: str = "") -> str:
    """A new empty database; returns its URL."""
    name = f"{PREFIX}{tag}{uuid.uuid4().hex[:12]}"
    admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return admin.url.set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = make_engine(url).url.database
    assert name and name.startswith(PREFIX), f"not a database of ours: {name}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def empty_tables(url: str, *tables: Table) -> None:
    """Delete every row of `tables` (a module's database is shared by its tests)."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for table in tables:
                conn.execute(table.delete())
    finally:
        engine.dispose()
