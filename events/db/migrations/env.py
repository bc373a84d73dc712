"""Alembic's environment, configured from code by events.db.migrate.

The caller passes an open connection, inside a transaction it began, in
`config.attributes["connection"]`: the migration then runs in that transaction, under the lock
the caller took, so two processes upgrading at once run it once.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from events.db.engine import make_engine, write_connection
from events.db.schema import include_object_for, metadata


def _run(conn: Connection) -> None:
    context.configure(
        connection=conn,
        target_metadata=metadata,
        # SQLite alters a table by copying it; later migrations get that for free.
        render_as_batch=conn.dialect.name == "sqlite",
        compare_type=True,
        include_object=include_object_for(conn.dialect.name),
    )
    with context.begin_transaction():
        context.run_migrations()


def _online() -> None:
    given = context.config.attributes.get("connection")
    if given is not None:
        _run(given)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "events.db.migrate passes a connection or sets sqlalchemy.url"
    engine = make_engine(url)
    try:
        with write_connection(engine) as conn, conn.begin():
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    _online()
