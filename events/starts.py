"""The keywords a Dispatcher's starts take (api.dispatch, worker.dispatcher and the relay tests'
one), declared once for the protocol and each implementation, and the record fields saying
who started a run."""

from __future__ import annotations

from typing import TypedDict

from events.models import ExecutionOptions
from events.requests import REQUEST_SOURCE, SavedRef, ScheduledTick
from events.vocabulary import RecordField


class Origin(TypedDict, total=False):
    """The keywords every start of a Dispatcher (api.dispatch) takes, each optional:
    `submitted_by`, who asks (the record's `submittedBy`; a token's name)."""

    submitted_by: str | None


class CommandStart(Origin, total=False):
    """A command's start: and its `options` (default: none)."""

    options: ExecutionOptions | None


class PlaybookStart(Origin, total=False):
    """A playbook's start: and `source`, where its YAML came from, for located messages
    (default REQUEST_SOURCE); `saved`, the saved playbook's name and version the record names
    (CONTRACT §10); `schedule`, the tick a schedule started it for (`scheduleId`,
    `scheduledAt`, and `submittedBy: schedule:<id>`)."""

    source: str
    saved: SavedRef | None
    schedule: ScheduledTick | None


def origin_fields(
    submitted_by: str | None = None, schedule: ScheduledTick | None = None
) -> dict[str, str]:
    """The record fields saying who started a run: `submittedBy` (a token's name, or
    `schedule:<id>`), and for a scheduled run `scheduleId` and `scheduledAt`."""
    out: dict[str, str] = {}
    if schedule is not None:
        out[RecordField.SCHEDULE_ID] = schedule.schedule_id
        out[RecordField.SCHEDULED_AT] = schedule.at
        submitted_by = submitted_by or schedule.submitter
    if submitted_by:
        out[RecordField.SUBMITTED_BY] = submitted_by
    return out


def source_of(start: PlaybookStart) -> str:
    """Where a start's playbook came from, for located messages: `source`, or REQUEST_SOURCE."""
    return start.get("source", REQUEST_SOURCE)
