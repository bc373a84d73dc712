"""Databases for the history tests: each test module gets a PostgreSQL database of its own
(created under a unique name, dropped after) and a SQLite file of its own; `db_url` runs a test
on both. Tables are emptied before each test, so tests of one module never see each other."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine

from events.db import migrate
from events.db.engine import make_engine
from events.db.schema import metadata
from tests.db.fleet import Fleet
from tests.db.pg import create_pg_database, drop_pg_database

DIALECTS = ["postgresql", "sqlite"]


@pytest.fixture(scope="module")
def pg_empty_url() -> Iterator[str]:
    """A PostgreSQL database of this module's own, without schema."""
    url = create_pg_database()
    yield url
    drop_pg_database(url)


@pytest.fixture(scope="module")
def pg_url(pg_empty_url: str) -> str:
    migrate.upgrade(pg_empty_url)
    return pg_empty_url


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("history") / "history.db"
    return migrate.ensure_sqlite(path)


@pytest.fixture(params=DIALECTS)
def db_url(request: pytest.FixtureRequest) -> str:
    """The module's database of each dialect, at head, emptied for this test."""
    url: str = request.getfixturevalue("pg_url" if request.param == "postgresql" else "sqlite_url")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for table in reversed(metadata.sorted_tables):
                conn.execute(table.delete())
    finally:
        engine.dispose()
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def api(fleet: Fleet) -> Iterator[httpx.Client]:
    """A client of the relay of the module's `fleet` (a fixture of each fleet test module)."""
    with fleet.api() as client:
        yield client
