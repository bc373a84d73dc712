"""One exception tree for the whole project: every error we raise derives from CloudOpsError."""

from __future__ import annotations


class CloudOpsError(Exception):
    """Base of every error raised by cloudops-execution-engine."""


class ConfigError(CloudOpsError):
    """A setting read from the environment is malformed."""


class EventDecodeError(CloudOpsError):
    """A wire envelope could not be decoded into one of the six events."""


class BusError(CloudOpsError):
    """The event bus (Redis) refused or failed an operation we cannot buffer."""


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
