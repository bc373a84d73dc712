"""Engine creation in one place, and what each dialect needs for our transactions to be safe.

PostgreSQL: READ COMMITTED, said explicitly because the archiver relies on it (a statement
after taking an advisory lock sees what the lock's previous holder committed; under
REPEATABLE READ the snapshot could predate the lock). SQLite: WAL, so that readers never block
the writer, and a busy timeout, so that two processes (two `cloudops run`, or a run and a
relay) writing one file wait for each other instead of failing; pysqlite's own transaction
handling is switched off so that a writer can open its transaction with BEGIN IMMEDIATE (the
file's write lock taken before its first read, the SQLite equivalent of the row lock).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url

# Execution option marking a connection whose transactions write (see module docstring).
WRITE_OPTION = "cloudops_write"
SQLITE_BUSY_TIMEOUT_MS = 30_000

# First key of our PostgreSQL advisory locks, so they never meet another application's.
_LOCK_CLASS = 0x0C1005


def normalize_url(url: str | URL) -> URL:
    """`postgresql://` and `postgres://` mean psycopg 3, the driver we ship (SQLAlchemy would
    otherwise look for psycopg2)."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """The one way this project makes an engine: pool_pre_ping (a connection that died while
    idle, a database restart, is replaced rather than failing the next query)."""
    u = normalize_url(url)
    opts: dict[str, Any] = {"pool_pre_ping": True}
    if u.get_backend_name() == "postgresql":
        opts["isolation_level"] = "READ COMMITTED"
        opts["connect_args"] = {"application_name": "cloudops"}
    opts.update(kwargs)
    engine = create_engine(u, **opts)
    if u.get_backend_name() == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # SQLAlchemy's documented recipe: pysqlite must not emit BEGIN (or COMMIT before DDL)
        # by itself; `_begin` does it.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        # In WAL mode NORMAL loses no committed transaction on a process crash (only on a power
        # loss, the last ones): history is a copy of Redis, re-archived if lost.
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


@contextmanager
def write_connection(engine: Engine) -> Iterator[Connection]:
    """A connection whose transactions take SQLite's write lock at BEGIN (see module docstring).

    A deferred SQLite transaction that reads and then writes fails with SQLITE_BUSY, without
    waiting, when another process wrote in between; an immediate one waits its turn instead.
    """
    with engine.connect() as conn:
        conn.execution_options(**{WRITE_OPTION: True})
        yield conn


def is_postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


def upsert(conn: Connection, table: Table) -> Any:
    """The dialect's INSERT, which has `on_conflict_do_update` / `on_conflict_do_nothing`."""
    if is_postgres(conn):
        return postgresql.insert(table)
    return sqlite.insert(table)


def _lock_id(name: str) -> int:
    """A stable signed 32-bit number for `name` (advisory locks take int4 keys)."""
    digest = hashlib.blake2b(name.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_for_transaction(conn: Connection, *names: str) -> None:
    """Hold locks named `names` until the current transaction ends (commit, rollback, or the
    connection's death). PostgreSQL: advisory transaction locks, taken in one statement in the
    order of their keys (unnest scans its array in order), so that two callers sharing some
    names never deadlock. SQLite: nothing to do, the transaction holds the whole file's write
    lock already (write_connection)."""
    if not is_postgres(conn) or not names:
        return
    lock_ids = sorted({_lock_id(n) for n in names})
    conn.execute(
        text("SELECT count(pg_advisory_xact_lock(:c, k)) FROM unnest(CAST(:ks AS int4[])) AS k"),
        {"c": _LOCK_CLASS, "ks": lock_ids},
    )


def try_lock_session(conn: Connection, name: str) -> bool:
    """Take a lock named `name` for the connection's life unless someone holds it; False then.

    PostgreSQL releases it when the connection closes, a crash included. SQLite: always True
    (each of the holder's transactions is alone on the file anyway).
    """
    if not is_postgres(conn):
        return True
    got = conn.execute(
        text("SELECT pg_try_advisory_lock(:c, :k)"), {"c": _LOCK_CLASS, "k": _lock_id(name)}
    ).scalar_one()
    conn.commit()
    return bool(got)


def unlock_session(conn: Connection, name: str) -> None:
    if is_postgres(conn):
        conn.execute(
            text("SELECT pg_advisory_unlock(:c, :k)"), {"c": _LOCK_CLASS, "k": _lock_id(name)}
        )
        conn.commit()
