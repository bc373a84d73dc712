"""What a rerun of an ended execution runs (CONTRACT §7, `POST /api/executions/{id}/rerun`).

The one rule, decided from the old execution's record alone (Redis's, or the database's once
Redis forgot it), so the fleet's dispatcher, the relay tests' scripted one and the CLI agree:

- a command (not a playbook) reruns as a whole;
- a playbook starts at its first step that did not succeed; with `hosts="failed"` a fan-out
  step there runs only on the hosts that did not succeed (`failed timeout cancelled skipped
  lost`), with `hosts="all"` it resolves its targets as written; later steps run as written;
- `hosts="failed"` on an execution whose every step succeeded is refused ("nothing to rerun"),
  `hosts="all"` then reruns it all from step 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from events.errors import CannotRerunError
from events.vocabulary import CommandType, HostStatus, RecordField, Status, StepStatus

NOTHING_TO_RERUN = "nothing to rerun: every step succeeded"


class RerunHosts(StrEnum):
    """Which hosts of the first rerun step run again."""

    FAILED = "failed"
    ALL = "all"


@dataclass(frozen=True)
class RerunSource:
    """An ended execution as a rerun needs it: its record (wire form) and its stored spec."""

    execution_id: str
    record: Mapping[str, Any]
    spec: Mapping[str, Any] | None

    @property
    def saved(self) -> tuple[str, int] | None:
        """The saved playbook (name, version) it ran, if any: the rerun names the same one."""
        name, version = (
            self.record.get(RecordField.PLAYBOOK_NAME),
            self.record.get(RecordField.PLAYBOOK_VERSION),
        )
        return (str(name), int(version)) if name and version is not None else None


@dataclass(frozen=True)
class RerunPlan:
    """Where the rerun starts (0-based index into the old steps; 0 for a command) and, for a
    fan-out step there, the hosts it runs on (None: its targets as written)."""

    start_index: int
    hosts: tuple[str, ...] | None = None


def _step_succeeded(step: Mapping[str, Any]) -> bool:
    return step.get("status") == StepStatus.COMPLETED


def _hosts_to_rerun(step: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The hosts of a fan-out step that did not succeed; None when it has no host list (not a
    fan-out step, or one that never resolved its hosts: it then runs as written)."""
    hosts = step.get("hosts")
    if not hosts:
        return None
    failed = tuple(h["host"] for h in hosts if h.get("status") != HostStatus.COMPLETED)
    return failed or None


def plan_rerun(source: RerunSource, hosts: RerunHosts) -> RerunPlan:
    """What the rerun of `source` runs. CannotRerunError (a 409) while it is queued or
    running, when `hosts` is failed and nothing failed, or without the spec it ran."""
    record = source.record
    status = Status(str(record.get(RecordField.STATUS)))
    if not status.terminal:
        raise CannotRerunError(
            source.execution_id,
            f"execution {source.execution_id} is still {status}: cancel it or wait for its end",
        )
    if source.spec is None:
        raise CannotRerunError(
            source.execution_id, f"execution {source.execution_id} has no stored spec to rerun"
        )
    if record.get(RecordField.COMMAND_TYPE) != CommandType.PLAYBOOK:
        if hosts == RerunHosts.FAILED and status == Status.COMPLETED:
            raise CannotRerunError(source.execution_id, NOTHING_TO_RERUN)
        return RerunPlan(0)
    steps: list[Mapping[str, Any]] = list(record.get(RecordField.STEPS) or [])
    first = next((i for i, s in enumerate(steps) if not _step_succeeded(s)), None)
    if first is None:
        if hosts == RerunHosts.FAILED:
            raise CannotRerunError(source.execution_id, NOTHING_TO_RERUN)
        return RerunPlan(0)
    if hosts == RerunHosts.ALL:
        return RerunPlan(first)
    return RerunPlan(first, _hosts_to_rerun(steps[first]))
