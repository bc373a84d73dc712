"""Saved playbooks (CONTRACT §10): every save of a name is its next version, none rewritten.

The store checks a playbook before it keeps it, with the check the composition root injects
(the worker side's playbook loader: events/ knows nothing of playbooks' rules), so no invalid
playbook is ever saved, whoever saves it (the relay's PUT, the CLI without a relay).

Saving the text of the latest version again stores nothing: the answer is that version, with
`created` False (a `push` in a deploy script is then idempotent; the versions list shows real
changes only).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select
from sqlalchemy.exc import SQLAlchemyError

from events.db.engine import lock_for_transaction, write_connection
from events.db.errors import DatabaseUnavailableError, unavailable
from events.db.schema import saved_playbooks as sp
from events.errors import InvalidRequestError, UnknownPlaybookError
from events.requests import SavedRef

# A name is a path segment and a CLI argument: no spaces, slashes or leading punctuation.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128"

# Versions are int4 in the table: a bigger number asked for is bad input, not a database error.
MAX_VERSION = 2**31 - 1

# `check(yaml_text, source_name)`: raise InvalidRequestError (PlaybookError) naming every problem.
PlaybookCheck = Callable[[str, str], None]


def check_name(name: str, field: str = "name") -> str:
    if not NAME_RE.fullmatch(name):
        raise InvalidRequestError(field, f"must be {NAME_RULE} characters, got {name!r}")
    return name


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class VersionInfo:
    version: int
    created_at: datetime
    created_by: str | None

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, "createdAt": _iso(self.created_at)}
        if self.created_by is not None:
            out["createdBy"] = self.created_by
        return out


@dataclass(frozen=True)
class SavedPlaybook:
    """One version of a saved playbook, and every version of its name."""

    name: str
    version: int
    yaml: str
    created_at: datetime
    created_by: str | None
    versions: tuple[VersionInfo, ...]

    @property
    def ref(self) -> SavedRef:
        return SavedRef(self.name, self.version)

    @property
    def source(self) -> str:
        """How located errors of a run name it."""
        return f"{self.name} (version {self.version})"

    def wire(self) -> dict[str, Any]:
        head = VersionInfo(self.version, self.created_at, self.created_by).wire()
        return {
            "name": self.name,
            **head,
            "yaml": self.yaml,
            "versions": [v.wire() for v in self.versions],
        }


@dataclass(frozen=True)
class Saved:
    playbook: SavedPlaybook
    created: bool  # False: the text was the latest version's already


class PlaybookStore:
    def __init__(self, engine: Engine, check: PlaybookCheck) -> None:
        self._engine = engine
        self._check = check

    def _unavailable(self, e: SQLAlchemyError) -> DatabaseUnavailableError:
        return unavailable(self._engine.url.render_as_string(hide_password=True), e)

    def save(self, name: str, text: str, created_by: str | None = None) -> Saved:
        """Check `text`, then keep it as `name`'s next version (see the module docstring)."""
        check_name(name)
        self._check(text, name)
        try:
            with write_connection(self._engine) as conn, conn.begin():
                # Two saves of one name at once: one waits, then takes the next number.
                lock_for_transaction(conn, f"playbook:{name}")
                latest = self._latest(conn, name)
                if latest is not None and latest.yaml == text:
                    return Saved(latest, created=False)
                version = 1 if latest is None else latest.version + 1
                conn.execute(
                    sp.insert().values(
                        name=name,
                        version=version,
                        yaml=text,
                        created_at=datetime.now(UTC),
                        created_by=created_by,
                    )
                )
                saved = self._read(conn, name, version)
        except SQLAlchemyError as e:
            raise self._unavailable(e) from e
        assert saved is not None
        return Saved(saved, created=True)

    def get(self, name: str, version: int | None = None) -> SavedPlaybook:
        """The latest version, or `version`; UnknownPlaybookError when there is none."""
        try:
            with self._engine.connect() as conn:
                found = (
                    self._latest(conn, name) if version is None else self._read(conn, name, version)
                )
        except SQLAlchemyError as e:
            raise self._unavailable(e) from e
        if found is None:
            raise UnknownPlaybookError(name, version)
        return found

    def for_run(self, name: str, version: int | None = None) -> SavedPlaybook:
        """What a run by name runs: InvalidRequestError naming `playbookName` or `version`
        (the request's fields) when there is no such playbook or version."""
        try:
            latest = self.get(name)
        except UnknownPlaybookError as e:
            raise InvalidRequestError("playbookName", f"no saved playbook named {name!r}") from e
        if version is None or version == latest.version:
            return latest
        try:
            return self.get(name, version)
        except UnknownPlaybookError as e:
            have = ", ".join(str(v.version) for v in latest.versions)
            raise InvalidRequestError(
                "version", f"{name!r} has no version {version} (it has {have})"
            ) from e

    def summaries(self) -> list[dict[str, Any]]:
        """Every name with its latest version and when that was saved, by name."""
        stmt = (
            select(sp.c.name, func.max(sp.c.version), func.max(sp.c.created_at))
            .group_by(sp.c.name)
            .order_by(sp.c.name)
        )
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(stmt).all()
        except SQLAlchemyError as e:
            raise self._unavailable(e) from e
        return [
            {"name": name, "version": version, "updatedAt": _iso(at)} for name, version, at in rows
        ]

    def delete(self, name: str) -> int:
        """Delete every version of `name`; how many. UnknownPlaybookError when there is none."""
        try:
            with write_connection(self._engine) as conn, conn.begin():
                lock_for_transaction(conn, f"playbook:{name}")
                deleted = conn.execute(delete(sp).where(sp.c.name == name)).rowcount
        except SQLAlchemyError as e:
            raise self._unavailable(e) from e
        if not deleted:
            raise UnknownPlaybookError(name)
        return int(deleted)

    # -- reads in a transaction ----------------------------------------------------------
    def _latest(self, conn: Connection, name: str) -> SavedPlaybook | None:
        top = select(func.max(sp.c.version)).where(sp.c.name == name).scalar_subquery()
        version = conn.execute(select(top)).scalar()
        return None if version is None else self._read(conn, name, int(version))

    def _read(self, conn: Connection, name: str, version: int) -> SavedPlaybook | None:
        row = conn.execute(
            select(sp.c.yaml, sp.c.created_at, sp.c.created_by).where(
                sp.c.name == name, sp.c.version == version
            )
        ).first()
        if row is None:
            return None
        versions = conn.execute(
            select(sp.c.version, sp.c.created_at, sp.c.created_by)
            .where(sp.c.name == name)
            .order_by(sp.c.version)
        ).all()
        return SavedPlaybook(
            name,
            version,
            row.yaml,
            row.created_at,
            row.created_by,
            tuple(VersionInfo(v, at, by) for v, at, by in versions),
        )
