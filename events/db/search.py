"""The executions list's filters and pages (CONTRACT §8), over the database, Redis, or both.

`SearchFilter` is the one definition of what matches: `History.search` says it in SQL,
`matches` in Python for records read from Redis (live ones, or every one when no database is
configured); both sides of each filter sit here and in query.py side by side.

A page is newest first by (queuedAt, executionId), the key the cursor holds, with no duplicate
and no gap across pages: `merge_page` puts the database's page and the live records of Redis
together. A live record replaces the database's copy (it is newer: a status the archiver has
not stored yet), and a live record the database lacks (queued a moment ago) joins the page.
When the database has more rows, the page stops at its last row: what lies beyond it is not
known here, and the next page (cursor below that key) finds it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from events.db.query import DEFAULT_LIMIT, MAX_LIMIT, decode_cursor, encode_cursor
from events.db.rows import parse_time, record_hosts, search_text
from events.errors import InvalidRequestError
from events.vocabulary import CommandType, Status

Key = tuple[datetime, str]
Wire = dict[str, Any]

# Live records the database may not hold yet: the archiver stores a first row for every
# execution within a pass (about a second); this window leaves it a wide margin.
LIVE_WINDOW_S = 120.0
# The response header holding the next page's cursor.
NEXT_CURSOR = "X-Next-Cursor"
_NEVER = datetime.min.replace(tzinfo=UTC)
# Each filter's attribute and its name in the list's query string (CONTRACT §8).
_QUERY_NAMES = {
    "status": "status",
    "command_type": "commandType",
    "q": "q",
    "host": "host",
    "submitted_by": "submittedBy",
    "since": "since",
    "until": "until",
}


class BadFiltersError(InvalidRequestError):
    """Several filters are bad: the message names each."""

    def __init__(self, problems: list[InvalidRequestError]) -> None:
        # "<field>: <message>" of the first, then the others: one line naming each.
        rest = "".join(f"; {p}" for p in problems[1:])
        super().__init__(problems[0].field, problems[0].message + rest)
        self.problems = problems


def _time(value: str | None, name: str) -> datetime | None:
    if value is None or value == "":
        return None
    parsed = parse_time(value)
    has_zone = value.upper().endswith("Z") or value[-6:-5] in "+-"
    if parsed is None or "T" not in value.upper() or not has_zone:
        raise InvalidRequestError(name, f"not an RFC 3339 timestamp with a time zone: {value!r}")
    return parsed


def _choice(value: str | None, name: str, allowed: Iterable[str]) -> str | None:
    if value is None or value == "":
        return None
    names = [str(a) for a in allowed]
    if value not in names:
        raise InvalidRequestError(name, "must be one of " + ", ".join(repr(n) for n in names))
    return value


# The filters a query-string value is checked by (the others: as given, empty is none).
_CHECKS: dict[str, Callable[[str | None], Any]] = {
    "status": lambda v: _choice(v, "status", (s.value for s in Status)),
    "command_type": lambda v: _choice(v, "commandType", (c.value for c in CommandType)),
    "since": lambda v: _time(v, "since"),
    "until": lambda v: _time(v, "until"),
}


@dataclass(frozen=True)
class SearchFilter:
    status: str | None = None
    command_type: str | None = None
    q: str | None = None
    host: str | None = None
    submitted_by: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def from_query(cls, query: Mapping[str, str | None]) -> SearchFilter:
        """From the list's query string, by the names `query()` writes; other keys (limit,
        cursor) are not filters and are passed over. BadFiltersError naming every bad one."""
        problems: list[InvalidRequestError] = []
        values: dict[str, Any] = {}
        for attr, name in _QUERY_NAMES.items():
            check = _CHECKS.get(attr)
            try:
                values[attr] = check(query.get(name)) if check else query.get(name) or None
            except InvalidRequestError as e:
                problems.append(e)
        if problems:
            raise BadFiltersError(problems)
        return cls(**values)

    def matches(self, wire: Mapping[str, Any]) -> bool:
        """The filter on a record's wire JSON: the same rules History.search says in SQL."""
        if self.status and wire.get("status") != self.status:
            return False
        if self.command_type and wire.get("commandType") != self.command_type:
            return False
        if self.submitted_by and wire.get("submittedBy") != self.submitted_by:
            return False
        if self.q:
            command = str(wire.get("command", ""))
            name = wire.get("playbookName") or (
                command if wire.get("commandType") == CommandType.PLAYBOOK else None
            )
            if self.q.lower() not in search_text(command, name):
                return False
        if self.host and self.host not in record_hosts(wire):
            return False
        at = record_key(wire)[0]
        if self.since is not None and at < self.since:
            return False
        return self.until is None or at < self.until

    def query(self) -> dict[str, str]:
        """As the list's query string (`cloudops ls --remote`)."""
        out: dict[str, str] = {}
        for attr, value in self.sql_args().items():
            if value is not None:
                out[_QUERY_NAMES[attr]] = (
                    value.isoformat() if isinstance(value, datetime) else str(value)
                )
        return out

    def sql_args(self) -> dict[str, Any]:
        """Keyword arguments of History.search."""
        return {attr: getattr(self, attr) for attr in _QUERY_NAMES}


def record_key(wire: Mapping[str, Any]) -> Key:
    """Where a record sits in the list: (queuedAt, executionId), as the database orders it."""
    at = parse_time(wire.get("queuedAt")) or parse_time(wire.get("startedAt"))
    return (at or _NEVER), str(wire["executionId"])


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequestError("limit", f"must be between 1 and {MAX_LIMIT}")
    return limit


def cursor_key(cursor: str | None) -> Key | None:
    return decode_cursor(cursor) if cursor else None


def page_of(
    candidates: Iterable[Wire], filt: SearchFilter, limit: int, below: Key | None
) -> tuple[list[Wire], str | None]:
    """The first `limit` matching records below the cursor key, newest first, and the next
    cursor (None when nothing more matched among `candidates`)."""
    hits = [w for w in candidates if filt.matches(w) and (below is None or record_key(w) < below)]
    hits.sort(key=record_key, reverse=True)
    page = hits[:limit]
    return page, (_cursor(page[-1]) if len(hits) > limit else None)


def merge_page(
    stored: list[Wire],
    stored_next: str | None,
    live: Mapping[str, Wire],
    filt: SearchFilter,
    limit: int = DEFAULT_LIMIT,
    below: Key | None = None,
) -> tuple[list[Wire], str | None]:
    """The database's page (`stored`, `stored_next` its next cursor) merged with live Redis
    records (execution id -> wire), as the module docstring says."""
    by_id = {str(w["executionId"]): w for w in stored}
    by_id.update(live)
    boundary = record_key(stored[-1]) if stored_next is not None and stored else None
    candidates = [w for w in by_id.values() if boundary is None or record_key(w) >= boundary]
    page, more = page_of(candidates, filt, limit, below)
    if more is None and stored_next is not None:
        more = _cursor(page[-1]) if page else stored_next
    return page, more


def _cursor(wire: Mapping[str, Any]) -> str:
    at, execution_id = record_key(wire)
    return encode_cursor(at, execution_id)
