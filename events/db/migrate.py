"""Schema versions: upgrade, check, and the embedded SQLite file that upgrades itself.

`cloudops db upgrade` is `upgrade(url)`; a relay or worker calls `check_schema(url)` at start and
refuses to start on SchemaBehindError (one line naming the command to run). Embedded mode calls
`ensure_sqlite()`, which creates or upgrades its file by itself: nobody runs commands for it.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from events.db.engine import lock_for_transaction, make_engine, write_connection
from events.db.errors import SchemaAheadError, SchemaBehindError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

Target = str | URL | Engine


def alembic_config(url: str | None = None) -> Config:
    """Alembic's configuration built in code: no alembic.ini is read or needed."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url)
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "events/db/migrations has no revision"
    return head


@contextmanager
def _engine(target: Target) -> Iterator[Engine]:
    if isinstance(target, Engine):
        yield target
        return
    engine = make_engine(target)
    try:
        yield engine
    finally:
        engine.dispose()


def upgrade(target: Target, revision: str = "head") -> None:
    """Migrate the database to `revision`. Safe to run from several processes at once: the
    migration runs in one transaction (PostgreSQL and SQLite both have transactional DDL)
    under a lock, so the second one finds the work done."""
    with _engine(target) as engine, write_connection(engine) as conn, conn.begin():
        lock_for_transaction(conn, "schema-migration")
        cfg = alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def current_revision(target: Target) -> str | None:
    """The database's revision; None for a database without our schema."""
    with _engine(target) as engine, engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def check_schema(target: Target) -> None:
    """Raise SchemaBehindError unless the database is at this code's head revision
    (SchemaAheadError when a newer cloudops migrated it past what this one knows)."""
    current = current_revision(target)
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise SchemaBehindError(None, head)
    try:
        ScriptDirectory.from_config(alembic_config()).get_revision(current)
    except CommandError as e:
        raise SchemaAheadError(current, head) from e
    raise SchemaBehindError(current, head)


def default_sqlite_path(env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_DATA_HOME/cloudops/history.db`, `~/.local/share/cloudops/history.db` without it
    (the XDG base directory spec's default)."""
    e = os.environ if env is None else env
    base = e.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cloudops" / "history.db"


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def ensure_sqlite(path: Path | None = None) -> str:
    """Create or upgrade the embedded SQLite history; returns its URL."""
    path = path or default_sqlite_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    url = sqlite_url(path)
    with _engine(url) as engine:
        if current_revision(engine) != head_revision():
            upgrade(engine)
    return url


def _revision(message: str) -> None:
    """Developer tool: autogenerate a new revision against an empty SQLite at head."""
    with tempfile.TemporaryDirectory() as tmp:
        url = sqlite_url(Path(tmp) / "autogen.db")
        upgrade(url)
        command.revision(alembic_config(url), message=message, autogenerate=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "revision":
        sys.exit('usage: python -m events.db.migrate revision "what changes"')
    _revision(sys.argv[2])
