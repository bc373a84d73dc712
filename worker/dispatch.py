"""The submission side: what the relay and the CLI call to start and cancel executions.

`Dispatcher` is the interface; `worker.celery_dispatch.CeleryDispatcher` sends Celery tasks
and `worker.embedded.EmbeddedDispatcher` runs in-process. Both validate input and raise
`events.errors.InvalidRequestError(field, message)` before anything is queued.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from events.models import ExecutionOptions


def new_execution_id() -> str:
    return "ex_" + uuid.uuid4().hex[:20]


class Dispatcher(Protocol):
    def submit_command(
        self, command: str, command_type: str, options: ExecutionOptions | None = None
    ) -> str:
        """Queue a command; return its execution id. `command_type` is aws_cli or script."""
        ...

    def submit_playbook(
        self,
        playbook: str | Mapping[str, Any],
        params: Mapping[str, str] | None = None,
        *,
        source: str = "<request>",
    ) -> str:
        """Validate and queue a playbook (YAML text or parsed object); return its id."""
        ...

    def cancel(self, execution_id: str) -> None:
        """Cancel a queued or running execution.

        Raises UnknownExecutionError if there is no such execution and ExecutionEndedError if
        it already ended (nothing changes then).
        """
        ...
