"""The words of the system, each written once: statuses, command types, streams, record fields.

Every place that holds one of these values holds the enum (a `StrEnum`, so it is also the wire
string). The Lua scripts get the record field names from `RecordField` (see `events.scripts`),
so Python and Lua can never disagree on a field's name.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """An execution's status (CONTRACT §1): queued, running, then one terminal status."""

    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self not in (Status.QUEUED, Status.RUNNING)


TERMINAL_STATUSES = frozenset(s for s in Status if s.terminal)


class StepStatus(StrEnum):
    """A playbook step's status in the record (`success` alone goes on the wire)."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


class HostStatus(StrEnum):
    """How one host of a fan-out step ended it (CONTRACT §7)."""

    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # not started: more hosts than max_failures had failed
    LOST = "lost"  # its worker died


class CommandType(StrEnum):
    AWS_CLI = "aws_cli"
    SCRIPT = "script"
    PLAYBOOK = "playbook"

    @classmethod
    def of_command(cls, command: str) -> CommandType:
        """`aws ...` is aws_cli, anything else a script (CONTRACT §4)."""
        first = command.strip().split(None, 1)
        return cls.AWS_CLI if first and first[0] == "aws" else cls.SCRIPT


# What `POST /api/executions` takes as a plain command (a playbook comes with its YAML).
COMMAND_TYPES = (CommandType.AWS_CLI, CommandType.SCRIPT)


class Stream(StrEnum):
    STDOUT = "stdout"
    STDERR = "stderr"


class RecordField(StrEnum):
    """Field names of an execution's record hash (events.keys.Keys.record).

    The record's own fields (what GET /api/executions/{id} shows) are camelCase like the wire;
    the others are bookkeeping of the publish and transition scripts.
    """

    EXECUTION_ID = "executionId"
    COMMAND = "command"
    COMMAND_TYPE = "commandType"
    STATUS = "status"
    OPTIONS = "options"
    QUEUED_AT = "queuedAt"
    STARTED_AT = "startedAt"
    COMPLETED_AT = "completedAt"
    DURATION_MS = "durationMs"
    EXIT_CODE = "exitCode"
    ERROR = "error"
    WORKER = "worker"
    # A run of a saved playbook (CONTRACT §10): its name and the version run.
    PLAYBOOK_NAME = "playbookName"
    PLAYBOOK_VERSION = "playbookVersion"
    # The execution this one reruns (CONTRACT §7: POST /api/executions/{id}/rerun).
    RERUN_OF = "rerunOf"
    # Who started it (CONTRACT §9/§10): a token's name, or `schedule:<id>` for a scheduled run.
    SUBMITTED_BY = "submittedBy"
    # Who cancelled it (CONTRACT §9): the token's name.
    CANCELLED_BY = "cancelledBy"
    # A scheduled run (CONTRACT §10): its schedule and the tick it is the run of (RFC 3339).
    SCHEDULE_ID = "scheduleId"
    SCHEDULED_AT = "scheduledAt"
    # The initial step list (JSON); each step's progress is in `step:<n>` (see step_field).
    STEPS = "steps"
    # What the worker runs (JSON): the command and options, or the rendered playbook.
    SPEC = "spec"
    # The Celery task to revoke on cancel.
    TASK_ID = "taskId"
    CANCEL_REQUESTED = "cancelRequested"
    # The running command's leader and the pool process that runs it (the host's reaper).
    PID = "pid"
    WORKER_PID = "workerPid"
    # The id of the execution's execution_complete: set once, nothing is published after it.
    COMPLETE_ID = "completeId"
    # UTF-8 bytes of output envelopes kept so far, against CLOUDOPS_MAX_OUTPUT_BYTES.
    OUTPUT_BYTES = "outputBytes"
    OUTPUT_TRUNCATED = "outputTruncated"
    # A playbook between two steps: the index of the step whose task is queued, not claimed.
    STEP_QUEUED = "stepQueued"
    # That step's index while its task is being sent (the handing-off worker answers for it).
    HAND_OFF = "handOff"
    # The index of the step claimed last.
    STEP_INDEX = "stepIndex"
    # `max_concurrent`: the playbook whose slots the run takes, and how many there are.
    # The step number (1-based) whose hosts run now: a fan-out step (worker/playbook/fanout.py).
    FAN_OUT = "fanOut"
    SLOT_NAME = "slotName"
    MAX_CONCURRENT = "maxConcurrent"


def step_field(step_number: int) -> str:
    """The record field of step `step_number` (1-based): its status, times, exit code."""
    return f"step:{step_number}"


# Prefix of the per-publisher fields holding the last batch number each publisher sent (the
# retried-batch dedupe of the publish rules).
PUBLISHER_FIELD_PREFIX = "pub:"


class Outcome(StrEnum):
    """What a record transition script (events/lua) answers besides a status."""

    OK = "ok"
    UNKNOWN = "unknown"  # no such execution
    ENDED = "ended"  # it already has its execution_complete
    STALE = "stale"  # a playbook step that is not the one queued
    CANCEL = "cancel"  # a cancel was requested first
    WAIT = "wait"  # no free max_concurrent slot: the run waits
    QUEUED = "queued"  # a cancel found nothing running: the caller ends the run


class Role(StrEnum):
    """What an API token may do (CONTRACT §9); each role includes the ones before it."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    def includes(self, other: Role) -> bool:
        order = list(Role)
        return order.index(self) >= order.index(other)
