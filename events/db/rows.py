"""From what Redis holds (the record hash, the envelopes) to executions and hosts rows.

The one place that knows which hash fields become which columns. The record's wire form comes
from events.records.record_from_hash, the rule the relay serves records by, so a record read
back from the database is what the relay showed while Redis held it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from events.records import record_from_hash
from events.vocabulary import RecordField as F

TERMINAL = frozenset({"completed", "failed", "timeout", "cancelled"})

# Record fields of CONTRACT §9/§10 that the hash will carry (camelCase like every hash field);
# read from the wire record first, the hash second, whichever has them.
_TEXT_FIELDS = {
    "submitted_by": "submittedBy",
    "cancelled_by": "cancelledBy",
    "schedule_id": "scheduleId",
    "rerun_of": "rerunOf",
    "playbook_name": F.PLAYBOOK_NAME,
}

_OUTPUT_HEAD = b'{"event":"execution_output"'


def wire_record(raw: Mapping[str, str]) -> dict[str, Any]:
    """The record's wire JSON (camelCase, absent values left out), as GET serves it."""
    return record_from_hash(raw).wire()


def parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _int(value: object) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(str(value))
    except ValueError:
        return None


# An inline script can be long; its first 4,000 characters are what anyone searches by, and the
# trigram index grows with every character indexed.
SEARCH_TEXT_CHARS = 4000


def search_text(command: str, playbook_name: str | None) -> str:
    """What `q` matches, lower-cased here (not in SQL) so both dialects fold case alike."""
    parts = [command[:SEARCH_TEXT_CHARS]]
    if playbook_name and playbook_name != command:
        parts.append(playbook_name)
    return "\n".join(parts).lower()


def execution_values(
    execution_id: str,
    raw: Mapping[str, str],
    *,
    archived_through: int,
    done: bool,
    now: datetime,
) -> dict[str, Any]:
    """The executions row for record hash `raw` with events stored through `archived_through`;
    `done`: nothing of it is left to archive."""
    wire = wire_record(raw)
    extra = {col: wire.get(name) or raw.get(name) or None for col, name in _TEXT_FIELDS.items()}
    command = str(wire.get("command", ""))
    command_type = str(wire.get("commandType", ""))
    if extra["playbook_name"] is None and command_type == "playbook":
        extra["playbook_name"] = command  # a playbook's record names it in `command`
    complete_id = _int(raw.get("completeId"))
    queued = parse_time(wire.get("queuedAt")) or parse_time(wire.get("startedAt")) or now
    try:
        spec = json.loads(raw["spec"]) if raw.get("spec") else None
    except ValueError:
        spec = None
    return {
        "execution_id": execution_id,
        "command": command,
        "command_type": command_type,
        "status": str(wire.get("status", "")),
        "options": wire.get("options") or {},
        "queued_at": queued,
        "started_at": parse_time(wire.get("startedAt")),
        "completed_at": parse_time(wire.get("completedAt")),
        "duration_ms": _int(wire.get("durationMs")),
        "exit_code": _int(wire.get("exitCode")),
        "error": wire.get("error"),
        "worker": wire.get("worker"),
        "steps": wire.get("steps"),
        "output_truncated": wire.get("outputTruncated"),
        "cancel_requested": wire.get("cancelRequested"),
        **extra,
        "playbook_version": _int(wire.get(F.PLAYBOOK_VERSION) or raw.get(F.PLAYBOOK_VERSION)),
        "spec": spec,
        "record": wire,
        "search_text": search_text(command, extra["playbook_name"]),
        "complete_id": complete_id,
        "archived_through": archived_through,
        "archive_done": done,
        "archived_at": now,
    }


def record_hosts(wire: Mapping[str, Any]) -> set[str]:
    """Hosts named by a record: its worker, each step's worker, each fan-out step's hosts."""
    hosts: set[str] = set()
    if isinstance(wire.get("worker"), str):
        hosts.add(wire["worker"])
    for step in wire.get("steps") or ():
        if isinstance(step.get("worker"), str):
            hosts.add(step["worker"])
        for h in step.get("hosts") or ():
            if isinstance(h, Mapping) and isinstance(h.get("host"), str):
                hosts.add(h["host"])
    return hosts


def event_hosts(envelopes: Iterable[bytes]) -> set[str]:
    """Hosts named by control events (`worker`, fan-out's `host`). Output chunks, the bulk of a
    history, are not parsed: every host that prints also started something."""
    hosts: set[str] = set()
    for env in envelopes:
        if env.startswith(_OUTPUT_HEAD):
            continue
        try:
            payload = json.loads(env).get("payload") or {}
        except (ValueError, AttributeError):
            continue
        for name in ("worker", "host"):
            if isinstance(payload.get(name), str) and payload[name]:
                hosts.add(payload[name])
    return hosts
