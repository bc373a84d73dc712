"""Submit and cancel executions on the Celery fleet (the relay's and remote CLI's Dispatcher)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from events.errors import ExecutionEndedError, UnknownExecutionError
from events.lifecycle import Reporter
from events.models import ExecutionOptions, utc_now
from events.settings import Settings
from worker.app import TASK_RUN_COMMAND, client_app
from worker.commands import validate_command
from worker.dispatch import new_execution_id
from worker.finish import celery_step_sender, finish
from worker.playbook import playbook_output_tail, submit_playbook
from worker.runner import cancel_unstarted
from worker.runtime import Runtime

log = logging.getLogger(__name__)

__all__ = ["CeleryDispatcher", "new_execution_id"]


class CeleryDispatcher:
    def __init__(self, settings: Settings, runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.app = client_app(settings)
        self.rt = runtime or Runtime.build(settings)
        self.send_step = celery_step_sender(self.app, settings.default_queue)

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
        """Validate (PlaybookError before anything exists), record and queue a playbook run."""
        return submit_playbook(self.rt, self.send_step, playbook, params, source=source)

    def cancel(self, execution_id: str) -> None:
        found = self.rt.records.request_cancel(execution_id)
        if found == "unknown":
            raise UnknownExecutionError(execution_id)
        if found.startswith("ended:"):
            raise ExecutionEndedError(execution_id, found.removeprefix("ended:"))
        task_id, started_at = self.rt.records.fields(execution_id, "taskId", "startedAt")
        task_id = task_id or execution_id
        if found == "queued":
            # Queued, waiting for a playbook slot, or a playbook between two steps: no worker
            # holds it. The task is discarded by whichever worker receives it; the claim
            # refuses it anyway.
            self.app.control.revoke(task_id)
            cancel_unstarted(
                Reporter(self.rt.publisher, execution_id),
                wait=True,
                started_at=started_at,
                partial_output=playbook_output_tail(self.rt, execution_id) if started_at else "",
            )
            finish(self.rt, execution_id, self.send_step)
            return
        # Running: the worker's SIGTERM handler kills the command's whole session. If this
        # broadcast is missed, the watchdog sees the cancel mark within cancel_poll_interval_s.
        self.app.control.revoke(task_id, terminate=True, signal="SIGTERM")
