"""Schema versions: upgrade from empty, the check a relay makes at start, the self-upgrading
embedded SQLite file, and migrations that agree with events/db/schema.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text

from events.db import migrate
from events.db.engine import make_engine, normalize_url
from events.db.errors import SchemaAheadError, SchemaBehindError
from events.db.schema import executions, include_object_for, metadata
from events.errors import CloudOpsError, ConfigError
from events.settings import Settings
from tests.db.pg import create_pg_database, drop_pg_database
from tests.helpers import REPO

TABLES = {
    "alembic_version",
    "executions",
    "event_batches",
    "execution_hosts",
    "saved_playbooks",
}


@pytest.fixture(params=["postgresql", "sqlite"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield migrate.sqlite_url(tmp_path / "empty.db")
        return
    url = create_pg_database()
    yield url
    drop_pg_database(url)


@contextmanager
def engine_at(url: str) -> Iterator[Engine]:
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def test_upgrade_from_empty_creates_every_table_and_is_idempotent(empty_url: str) -> None:
    assert migrate.current_revision(empty_url) is None
    migrate.upgrade(empty_url)
    migrate.upgrade(empty_url)  # a second run finds nothing to do
    assert migrate.current_revision(empty_url) == migrate.head_revision()
    migrate.check_schema(empty_url)
    with engine_at(empty_url) as engine:
        assert set(inspect(engine).get_table_names()) >= TABLES
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                ext = conn.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'"))
                assert ext.scalar() == 1


def test_check_schema_on_an_empty_database_says_to_run_cloudops_db_upgrade(
    empty_url: str,
) -> None:
    with pytest.raises(SchemaBehindError) as info:
        migrate.check_schema(empty_url)
    message = str(info.value)
    assert isinstance(info.value, CloudOpsError)
    assert "\n" not in message
    assert "`cloudops db upgrade`" in message
    assert info.value.current is None and info.value.head == migrate.head_revision()


def test_check_schema_on_a_database_behind_head(
    empty_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate.upgrade(empty_url)
    at = migrate.head_revision()
    # A newer code base: its head is a revision after the database's.
    monkeypatch.setattr(migrate, "head_revision", lambda: "9999")
    with pytest.raises(
        SchemaBehindError, match=rf"at {at}, needs 9999\): run `cloudops db upgrade`"
    ):
        migrate.check_schema(empty_url)


def test_check_schema_on_a_database_newer_than_this_code(empty_url: str) -> None:
    migrate.upgrade(empty_url)
    with engine_at(empty_url) as engine, engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfeed'"))
    with pytest.raises(SchemaAheadError, match="f00dfeed is newer"):
        migrate.check_schema(empty_url)


def test_migrations_create_what_schema_py_declares(empty_url: str) -> None:
    migrate.upgrade(empty_url)
    with engine_at(empty_url) as engine, engine.connect() as conn:
        opts = {"compare_type": True, "include_object": include_object_for(conn.dialect.name)}
        diffs = compare_metadata(MigrationContext.configure(conn, opts=opts), metadata)
    assert diffs == []


def test_ensure_sqlite_creates_the_xdg_file_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    url = migrate.ensure_sqlite()
    path = tmp_path / "xdg" / "cloudops" / "history.db"
    assert url == f"sqlite:///{path}" and path.exists()
    migrate.check_schema(url)
    assert migrate.ensure_sqlite() == url  # already at head: nothing to do


def test_default_sqlite_path_without_xdg_data_home() -> None:
    path = migrate.default_sqlite_path({})
    assert path == Path.home() / ".local" / "share" / "cloudops" / "history.db"
    assert migrate.default_sqlite_path({"XDG_DATA_HOME": "/d"}) == Path("/d/cloudops/history.db")


def test_two_processes_creating_the_sqlite_file_at_once_both_succeed(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "history.db"
    code = "import sys, pathlib, events.db.migrate as m; m.ensure_sqlite(pathlib.Path(sys.argv[1]))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=REPO, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()[-2000:]
    migrate.check_schema(migrate.sqlite_url(path))


def test_timestamps_come_back_aware_and_in_utc(db_url: str) -> None:
    at = datetime(2026, 3, 4, 5, 6, 7, 8, tzinfo=timezone(timedelta(hours=2)))
    with engine_at(db_url) as engine:
        with engine.begin() as conn:
            conn.execute(
                executions.insert().values(
                    execution_id="ex_t",
                    command="c",
                    command_type="script",
                    status="queued",
                    options={},
                    queued_at=at,
                    record={},
                    search_text="c",
                    archived_at=at,
                )
            )
            got = conn.execute(select(executions.c.queued_at)).scalar_one()
        assert got == at and got.tzinfo is not None and got.utcoffset() == timedelta(0)
        assert got == datetime(2026, 3, 4, 3, 6, 7, 8, tzinfo=UTC)
        with pytest.raises(Exception, match="naive datetime"), engine.begin() as conn:
            conn.execute(executions.update().values(started_at=datetime(2026, 1, 1)))


def test_postgresql_urls_mean_psycopg_3() -> None:
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("sqlite:///x.db").drivername == "sqlite"


def test_history_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CLOUDOPS_DATABASE_URL", "CLOUDOPS_RETENTION_DAYS", "CLOUDOPS_RETENTION_MIN_KEEP"):
        monkeypatch.delenv(name, raising=False)
    s = Settings.from_env()
    assert (s.database_url, s.retention_days, s.retention_min_keep) == (None, 90, 1000)
    monkeypatch.setenv("CLOUDOPS_DATABASE_URL", "postgresql+psycopg://ops:hunter2@db/cloudops")
    monkeypatch.setenv("CLOUDOPS_RETENTION_DAYS", "30")
    monkeypatch.setenv("CLOUDOPS_RETENTION_MIN_KEEP", "0")
    s = Settings.from_env()
    assert (s.retention_days, s.retention_min_keep) == (30, 0)
    assert s.database_url == "postgresql+psycopg://ops:hunter2@db/cloudops"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)
    assert s.database_url_masked == "postgresql+psycopg://ops:***@db/cloudops"
    monkeypatch.setenv("CLOUDOPS_RETENTION_DAYS", "ninety")
    with pytest.raises(ConfigError, match="CLOUDOPS_RETENTION_DAYS must be an integer"):
        Settings.from_env()
    monkeypatch.setenv("CLOUDOPS_RETENTION_DAYS", "0")
    with pytest.raises(ConfigError, match="greater than or equal to 1"):
        Settings.from_env()
