"""Submit and cancel executions on the Celery fleet (the relay's and remote CLI's Dispatcher)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

from events.errors import ExecutionEndedError, InvalidRequestError, UnknownExecutionError
from events.lifecycle import Reporter
from events.models import ExecutionOptions, utc_now
from events.settings import Settings
from worker.app import TASK_RUN_COMMAND, client_app
from worker.commands import validate_command
from worker.runner import cancel_unstarted
from worker.runtime import Runtime

log = logging.getLogger(__name__)


def new_execution_id() -> str:
    return "ex_" + uuid.uuid4().hex[:20]


class CeleryDispatcher:
    def __init__(self, settings: Settings, runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.app = client_app(settings)
        self.rt = runtime or Runtime.build(settings)

    def submit_command(
        self, command: str, command_type: str, options: ExecutionOptions | None = None
    ) -> str:
        validate_command(command, command_type)
        opts = options or ExecutionOptions()
        execution_id = new_execution_id()
        wire_options = opts.wire()
        self.rt.records.create(
            execution_id,
            command=command,
            command_type=command_type,
            options=wire_options,
            queued_at=utc_now(),
            spec={"command": command, "commandType": command_type, "options": wire_options},
        )
        self.app.send_task(
            TASK_RUN_COMMAND,
            args=[execution_id],
            task_id=execution_id,
            queue=self.settings.default_queue,
        )
        return execution_id

    def submit_playbook(
        self,
        playbook: str | Mapping[str, Any],
        params: Mapping[str, str] | None = None,
        *,
        source: str = "<request>",
    ) -> str:
        raise InvalidRequestError("commandType", "playbooks are not supported yet")

    def cancel(self, execution_id: str) -> None:
        found = self.rt.records.request_cancel(execution_id)
        if found == "unknown":
            raise UnknownExecutionError(execution_id)
        if found.startswith("ended:"):
            raise ExecutionEndedError(execution_id, found.removeprefix("ended:"))
        task_id = self.rt.records.field(execution_id, "taskId") or execution_id
        if found == "queued":
            # Discarded by whichever worker receives it; the claim refuses it anyway.
            self.app.control.revoke(task_id)
            cancel_unstarted(Reporter(self.rt.publisher, execution_id), wait=True)
            return
        # Running: the worker's SIGTERM handler kills the command's whole session. If this
        # broadcast is missed, the watchdog sees the cancel mark within cancel_poll_interval_s.
        self.app.control.revoke(task_id, terminate=True, signal="SIGTERM")
