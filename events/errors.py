"""One exception tree for the whole project: every error we raise derives from CloudOpsError."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class CloudOpsError(Exception):
    """Base of every error raised by cloudops-execution-engine."""


class ConfigError(CloudOpsError):
    """A setting read from the environment is malformed."""


class EventDecodeError(CloudOpsError):
    """A wire envelope could not be decoded into one of the six events."""


class BusError(CloudOpsError):
    """The event bus (Redis) refused or failed an operation we cannot buffer."""


class PublishTimeoutError(BusError):
    """An event waited for was not taken by Redis in time (Redis down or overloaded)."""

    def __init__(self, execution_id: str, event: str, timeout_s: float) -> None:
        super().__init__(
            f"{event} of {execution_id} not published within {timeout_s:g} s: Redis unreachable?"
        )
        self.execution_id = execution_id
        self.event = event
        self.timeout_s = timeout_s


class UnknownExecutionError(CloudOpsError):
    """No record exists for the given execution id."""

    def __init__(self, execution_id: str) -> None:
        super().__init__(f"unknown execution: {execution_id}")
        self.execution_id = execution_id


class ExecutionEndedError(CloudOpsError):
    """The execution already reached a terminal status."""

    def __init__(self, execution_id: str, status: str) -> None:
        super().__init__(f"execution {execution_id} already ended ({status})")
        self.execution_id = execution_id
        self.status = status


class InvalidRequestError(CloudOpsError):
    """A request (command, options, playbook) is invalid; `field` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Problem:
    """One problem of a request: where (`loc`, from the request's field, as FastAPI's error
    locations are) and what (`msg`, one line that also names the place for a human)."""

    loc: tuple[str | int, ...]
    msg: str


class ProblemsError(InvalidRequestError):
    """A request refused for one or more problems, every one listed (a bad playbook, CONTRACT
    §5): the relay answers each as `{"loc", "msg"}`, the CLI prints each on a line."""

    def __init__(self, problems: Sequence[Problem], *, field: str | None = None) -> None:
        """`field` names the request field at fault in the one-line form (default: where the
        first problem is)."""
        if not problems:
            raise ValueError("a ProblemsError needs at least one problem")
        first, more = problems[0], len(problems) - 1
        # The one-line form (logs, str()): the first problem and how many more there are.
        message = first.msg
        if more:
            message += f" (and {more} more problem{'s' if more > 1 else ''})"
        if field is None:
            field = str(first.loc[0]) if first.loc else "request"
        super().__init__(field, message)
        self.problems = tuple(problems)


class BrokerUnavailableError(CloudOpsError):
    """The task broker (Redis or RabbitMQ) did not take a task in time."""

    def __init__(self, broker: str, reason: str) -> None:
        super().__init__(f"the broker ({broker}) is unavailable: {reason}")
        self.broker = broker
        self.reason = reason


class UnknownScheduleError(CloudOpsError):
    """No schedule of that id."""

    def __init__(self, schedule_id: str) -> None:
        super().__init__(f"unknown schedule: {schedule_id!r}")
        self.schedule_id = schedule_id


class UnknownPlaybookError(CloudOpsError):
    """No saved playbook of that name (or no such version of it)."""

    def __init__(self, name: str, version: int | None = None) -> None:
        what = f"{name!r}" if version is None else f"{name!r} version {version}"
        super().__init__(f"unknown saved playbook: {what}")
        self.name = name
        self.version = version


class CannotRerunError(CloudOpsError):
    """A rerun was refused: the execution has not ended, or nothing of it failed (a 409)."""

    def __init__(self, execution_id: str, reason: str) -> None:
        super().__init__(reason)
        self.execution_id = execution_id
        self.reason = reason


class UnknownTokenError(CloudOpsError):
    """No API token of that name (or it is revoked already)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown API token: {name!r}")
        self.name = name
