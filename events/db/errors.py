"""Errors of the history database; each derives from the project's one base, CloudOpsError."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from events.errors import CloudOpsError, ConfigError

T = TypeVar("T")


class SchemaBehindError(CloudOpsError):
    """The database has no schema yet, or an older one than this code needs."""

    def __init__(self, current: str | None, head: str) -> None:
        at = current or "empty"
        super().__init__(
            f"history database schema is behind (at {at}, needs {head}): run `cloudops db upgrade`"
        )
        self.current = current
        self.head = head


class SchemaAheadError(CloudOpsError):
    """The database was migrated by a newer cloudops than this one."""

    def __init__(self, current: str, head: str) -> None:
        super().__init__(
            f"history database schema {current} is newer than this cloudops knows (head {head}):"
            " upgrade cloudops"
        )
        self.current = current
        self.head = head


class CorruptBatchError(CloudOpsError):
    """A stored event batch does not hold the events its id range says."""

    def __init__(self, execution_id: str, first_id: int, why: str) -> None:
        super().__init__(f"event batch {execution_id}/{first_id} is corrupt: {why}")
        self.execution_id = execution_id
        self.first_id = first_id


class DatabaseUnavailableError(CloudOpsError):
    """The history database does not answer (or refused us); names it without its password."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"the history database ({where}) is unavailable: {why}")

    @classmethod
    def of(cls, engine: Engine, e: SQLAlchemyError) -> DatabaseUnavailableError:
        """From a failed statement on `engine`: its URL without the password, the first line."""
        where = engine.url.render_as_string(hide_password=True)
        return cls(where, str(getattr(e, "orig", None) or e).strip().splitlines()[0])


# The one wording of "no database", for the relay's 503 and the CLI's client alike.
NEEDS_DATABASE = " need the history database: CLOUDOPS_DATABASE_URL is not set"
SAVED_THINGS = "saved playbooks and schedules"
NO_DATABASE = SAVED_THINGS + NEEDS_DATABASE


class NoDatabaseError(ConfigError):
    """Something that lives only in the database (saved playbooks, API tokens) was asked for
    on a fleet without CLOUDOPS_DATABASE_URL; `what` names it."""

    def __init__(self, what: str = SAVED_THINGS) -> None:
        super().__init__(what + NEEDS_DATABASE)
        self.what = what


def needs_database(store: T | None, what: str = SAVED_THINGS) -> T:
    """`store`, one that lives in the history database; NoDatabaseError naming `what` when
    none is configured (None)."""
    if store is None:
        raise NoDatabaseError(what)
    return store


def unavailable(where: str, e: Exception) -> DatabaseUnavailableError:
    """A driver's error as the one DatabaseUnavailableError: its first line, never the URL's
    password (`where` is rendered without it)."""
    why = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
    return DatabaseUnavailableError(where, why)
