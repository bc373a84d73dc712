"""Schedules in the history database (CONTRACT §10): the definitions' one truth.

Why the database and not celery-redbeat's Redis entries alone: a schedule runs a saved
playbook, which lives here already (no database, no saved playbooks, no schedules); Redis is a
cache (CONTRACT §8), and a flushed or new Redis must not drop every schedule; and the relay
writes schedules without knowing anything of Celery (api/ never imports worker/). The
schedulers sync their redbeat entries from these rows (worker/beat.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, Row, delete, select, update
from sqlalchemy.exc import SQLAlchemyError

from events.db.engine import write_connection
from events.db.errors import DatabaseUnavailableError
from events.db.playbooks import PlaybookStore
from events.db.schema import schedules as t
from events.errors import InvalidRequestError, UnknownPlaybookError, UnknownScheduleError
from events.schedules import Cadence, ScheduleSpec, iso, parse_spec


@dataclass(frozen=True)
class Schedule:
    id: str
    spec: ScheduleSpec
    anchor: datetime
    created_at: datetime
    updated_at: datetime
    created_by: str | None

    @property
    def cadence(self) -> Cadence:
        return Cadence.of(self.spec, self.anchor)

    @property
    def submitter(self) -> str:
        return f"schedule:{self.id}"

    def wire(self, now: datetime | None = None) -> dict[str, Any]:
        out = {"id": self.id, **self.spec.wire(), "createdAt": iso(self.created_at)}
        out["updatedAt"] = iso(self.updated_at)
        if self.created_by is not None:
            out["createdBy"] = self.created_by
        if self.spec.enabled:
            out["nextRunAt"] = iso(self.cadence.next(now or datetime.now(UTC)))
        return out


def _schedule(row: Row[Any]) -> Schedule:
    spec = ScheduleSpec(
        row.playbook_name, dict(row.params), row.cron, row.timezone, row.interval_s, row.enabled
    )
    return Schedule(row.id, spec, row.anchor, row.created_at, row.updated_at, row.created_by)


def _values(spec: ScheduleSpec) -> dict[str, Any]:
    return {
        "playbook_name": spec.playbook_name,
        "params": spec.params,
        "cron": spec.cron,
        "timezone": spec.timezone,
        "interval_s": spec.interval_s,
        "enabled": spec.enabled,
    }


# `check(yaml_text, source_name, params)`: raise InvalidRequestError (PlaybookError) naming
# every problem a run with these params would have (injected: events/ knows no playbook rules).
RunCheck = Callable[[str, str, Mapping[str, str]], None]


class ScheduleStore:
    """Create, list, read, change and delete schedules; a schedule names a saved playbook
    that exists when it is created or changed (`playbookName` named otherwise)."""

    def __init__(
        self, engine: Engine, playbooks: PlaybookStore, check_run: RunCheck | None = None
    ) -> None:
        self._engine = engine
        self._playbooks = playbooks
        self._check_run = check_run

    def _check_playbook(self, spec: ScheduleSpec) -> None:
        try:
            saved = self._playbooks.get(spec.playbook_name)
        except UnknownPlaybookError as e:
            raise InvalidRequestError(
                "playbookName", f"no saved playbook named {spec.playbook_name!r}"
            ) from e
        if self._check_run is not None:
            # Its params as a run of the latest version would check them (a tick checks again:
            # a later version may want others).
            self._check_run(saved.yaml, saved.source, spec.params)

    def create(self, body: Mapping[str, Any], created_by: str | None = None) -> Schedule:
        spec = parse_spec(body)
        self._check_playbook(spec)
        now = datetime.now(UTC)
        sid = "sc_" + uuid.uuid4().hex[:16]
        values = _values(spec) | {"id": sid, "anchor": now, "created_at": now}
        self._write(t.insert().values(**values, updated_at=now, created_by=created_by))
        return self.get(sid)

    def update(self, schedule_id: str, body: Mapping[str, Any]) -> Schedule:
        old = self.get(schedule_id)
        spec = parse_spec(body, old.spec)
        if (spec.playbook_name, spec.params) != (old.spec.playbook_name, old.spec.params):
            self._check_playbook(spec)
        now = datetime.now(UTC)
        values = _values(spec) | {"updated_at": now}
        if (spec.cron, spec.interval_s, spec.timezone) != (
            old.spec.cron,
            old.spec.interval_s,
            old.spec.timezone,
        ) or (spec.enabled and not old.spec.enabled):
            # A new cadence, or enabled again: ticks count from now (none replayed).
            values["anchor"] = now
        self._write(update(t).where(t.c.id == schedule_id).values(**values))
        return self.get(schedule_id)

    def delete(self, schedule_id: str) -> None:
        if not self._write(delete(t).where(t.c.id == schedule_id)):
            raise UnknownScheduleError(schedule_id)

    def get(self, schedule_id: str) -> Schedule:
        rows = self._read(select(t).where(t.c.id == schedule_id))
        if not rows:
            raise UnknownScheduleError(schedule_id)
        return rows[0]

    def all(self) -> list[Schedule]:
        return self._read(select(t).order_by(t.c.created_at, t.c.id))

    def _read(self, stmt: Any) -> list[Schedule]:
        try:
            with self._engine.connect() as conn:
                return [_schedule(r) for r in conn.execute(stmt)]
        except SQLAlchemyError as e:
            raise DatabaseUnavailableError.of(self._engine, e) from e

    def _write(self, stmt: Any) -> int:
        try:
            with write_connection(self._engine) as conn, conn.begin():
                return int(conn.execute(stmt).rowcount)
        except SQLAlchemyError as e:
            raise DatabaseUnavailableError.of(self._engine, e) from e
