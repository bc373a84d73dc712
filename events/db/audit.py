"""The audit log (CONTRACT §9): every start, cancel, rerun, token create and revoke, and every
refused request (401, 403), with when, who (the token's name, or `anonymous`), what, on what,
how it ended and from where. It lives in the history database and is never pruned with the
executions (events.db.retention does not know this table).

Listed newest first, filtered by actor, action and time, a page at a time: the cursor is the
last id of the page (ids only grow).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from events.db.errors import DatabaseUnavailableError, unavailable
from events.db.schema import audit_log as a
from events.errors import InvalidRequestError

MAX_PAGE = 1000


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    actor: str
    action: str
    target: str | None
    outcome: str  # ok, failed (4xx/5xx), denied (403), unauthenticated (401)
    status: int
    client: str


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise InvalidRequestError("since", f"must be an RFC 3339 time, got {value!r}") from e
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


class AuditLog:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _unavailable(self, e: SQLAlchemyError) -> DatabaseUnavailableError:
        return unavailable(self._engine.url.render_as_string(hide_password=True), e)

    def write(self, entries: Sequence[AuditEntry]) -> None:
        if not entries:
            return
        try:
            with self._engine.begin() as conn:
                conn.execute(a.insert(), [asdict(e) for e in entries])
        except SQLAlchemyError as e:
            raise self._unavailable(e) from e

    def page(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Entries newest first, and the next page's cursor (None: this was the last)."""
        stmt = select(a).order_by(a.c.id.desc()).limit(min(limit, MAX_PAGE) + 1)
        if actor is not None:
            stmt = stmt.where(a.c.actor == actor)
        if action is not None:
            stmt = stmt.where(a.c.action == action)
        if since is not None:
            stmt = stmt.where(a.c.at >= since)
        if cursor is not None:
            if not cursor.isdigit():
                raise InvalidRequestError("cursor", "not a cursor of this list")
            stmt = stmt.where(a.c.id < int(cursor))
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(stmt).all()
        except SQLAlchemyError as e:
            raise self._unavailable(e) from e
        more = len(rows) > limit
        rows = rows[:limit]
        out = [
            {
                "id": r.id,
                "at": _iso(r.at),
                "actor": r.actor,
                "action": r.action,
                "target": r.target,
                "outcome": r.outcome,
                "status": r.status,
                "client": r.client,
            }
            for r in rows
        ]
        return out, (str(rows[-1].id) if more and rows else None)
