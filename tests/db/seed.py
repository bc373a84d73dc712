"""Executions rows written straight into a history database (no Redis), for the search and
retention tests: built from record hashes by the archiver's own mapping (events.db.rows)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine

from events.db.rows import execution_values, record_hosts
from events.db.schema import execution_hosts, executions

TERMINAL = {"completed", "failed", "timeout", "cancelled"}


def rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass
class Row:
    execution_id: str
    queued_at: datetime
    command: str = "echo hi"
    command_type: str = "script"
    status: str = "completed"
    worker: str | None = "w1@test"
    submitted_by: str | None = None
    hosts: Sequence[str] = field(default_factory=tuple)

    def raw(self) -> dict[str, str]:
        raw = {
            "executionId": self.execution_id,
            "command": self.command,
            "commandType": self.command_type,
            "status": self.status,
            "options": "{}",
            "queuedAt": rfc3339(self.queued_at),
        }
        if self.status != "queued":
            raw["startedAt"] = rfc3339(self.queued_at)
        if self.worker:
            raw["worker"] = self.worker
        if self.submitted_by:
            raw["submittedBy"] = self.submitted_by
        if self.hosts:
            steps = [
                {"stepId": f"s{i}", "stepName": h, "worker": h} for i, h in enumerate(self.hosts)
            ]
            raw["steps"] = json.dumps(steps)
        if self.status in TERMINAL:
            raw["completeId"] = "3"
        return raw


def insert_rows(engine: Engine, rows: Sequence[Row]) -> None:
    now = datetime.now(UTC)
    values = []
    hosts = []
    for r in rows:
        v = execution_values(
            r.execution_id, r.raw(), archived_through=0, done=r.status in TERMINAL, now=now
        )
        values.append(v)
        hosts += [{"execution_id": r.execution_id, "host": h} for h in record_hosts(v["record"])]
    with engine.begin() as conn:
        for i in range(0, len(values), 500):
            conn.execute(executions.insert(), values[i : i + 500])
        if hosts:
            conn.execute(execution_hosts.insert(), hosts)
