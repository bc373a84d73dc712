"""Start and cancel executions: what the relay and the CLI call (api.dispatch.Dispatcher).

One implementation for a fleet and for embedded mode: the record goes to Redis (a real one, or
the in-process one), the work to a TaskQueue (Celery, or threads of this process). Input is
validated before anything exists (InvalidRequestError naming the field).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Unpack

from events.errors import (
    BrokerUnavailableError,
    ExecutionEndedError,
    InvalidRequestError,
    Problem,
    ProblemsError,
    UnknownExecutionError,
)
from events.lifecycle import Reporter
from events.models import ExecutionOptions, utc_now
from events.requests import REQUEST_SOURCE, Params, PlaybookSource, SavedRef
from events.rerun import RerunHosts, RerunSource, plan_rerun
from events.scope import queues_of
from events.settings import Settings
from events.starts import CommandStart, Origin, PlaybookStart, origin_fields, source_of
from events.vocabulary import CommandType, Outcome, RecordField, Status
from worker.commands import command_type_named, validate_command
from worker.finish import finish
from worker.playbook.ending import playbook_output_tail
from worker.playbook.loading import check_for_saving
from worker.playbook.rerun import rerun_spec
from worker.playbook.run import prepare_playbook, queue_run, submit_playbook
from worker.playbook.secrets import rerun_secrets
from worker.runner import cancel_unstarted
from worker.runtime import Runtime
from worker.taskqueue import TaskQueue

F = RecordField
Extra = Mapping[str, str]  # more fields of a new record (rerunOf, the saved playbook)


def new_execution_id() -> str:
    return "ex_" + uuid.uuid4().hex[:20]


class Dispatcher:
    def __init__(self, rt: Runtime, tasks: TaskQueue) -> None:
        self.rt = rt
        self.tasks = tasks
        self.settings: Settings = rt.settings  # its default_queue routes commands

    def submit_command(self, command: str, command_type: str, **start: Unpack[CommandStart]) -> str:
        """Queue a command (`aws_cli` or `script`); its execution id."""
        kind = command_type_named(command_type)
        validate_command(command, kind)
        wire_options = (start.get("options") or ExecutionOptions()).wire()
        extra = origin_fields(start.get("submitted_by"))
        return self._queue_command(command, kind, wire_options, extra)

    def _queue_command(
        self, command: str, kind: CommandType, wire_options: Mapping[str, Any], extra: Extra
    ) -> str:
        execution_id = new_execution_id()
        self.rt.records.create(
            execution_id,
            command=command,
            command_type=kind,
            options=wire_options,
            queued_at=utc_now(),
            spec={"command": command, "commandType": kind, "options": wire_options},
            extra=extra,
        )
        try:
            self.tasks.send_command(execution_id, self.settings.default_queue)
        except BrokerUnavailableError as e:
            self._not_queued(execution_id, e)
            raise
        return execution_id

    def submit_playbook(
        self, playbook: PlaybookSource, params: Params = None, **start: Unpack[PlaybookStart]
    ) -> str:
        """Validate (PlaybookError before anything exists), record and queue a playbook run;
        its record names `submitted_by` and the `schedule` tick it is the run of."""
        execution_id = new_execution_id()
        try:
            return submit_playbook(
                self.rt,
                self.tasks,
                execution_id,
                playbook,
                params,
                source=source_of(start),
                saved=start.get("saved"),
                extra=origin_fields(start.get("submitted_by"), start.get("schedule")),
            )
        except BrokerUnavailableError as e:
            self._not_queued(execution_id, e)
            raise

    def rerun(
        self, source: RerunSource, hosts: RerunHosts, params: Params = None, **start: Unpack[Origin]
    ) -> str:
        """Queue the rerun of an ended execution (events.rerun says what it runs); `params`:
        its secret params again (worker.playbook.secrets.rerun_secrets)."""
        plan = plan_rerun(source, hosts)
        assert source.spec is not None  # plan_rerun refuses a source without one
        spec = source.spec
        origin = origin_fields(start.get("submitted_by"))
        extra: dict[str, str] = {F.RERUN_OF: source.execution_id} | origin
        if source.saved is not None:
            extra |= SavedRef(*source.saved).record_fields()
        if source.record.get("commandType") != CommandType.PLAYBOOK:
            if params:
                raise InvalidRequestError("params", "a command's rerun takes no params")
            kind = CommandType(spec["commandType"])
            return self._queue_command(spec["command"], kind, spec.get("options") or {}, extra)
        secrets = rerun_secrets(spec, params)
        new_spec = rerun_spec(spec, plan)
        execution_id = new_execution_id()
        try:
            return queue_run(
                self.rt,
                self.tasks,
                execution_id,
                new_spec,
                extra=extra,
                secrets=secrets,
            )
        except BrokerUnavailableError as e:
            self._not_queued(execution_id, e)
            raise

    def check_playbook(self, playbook: str, source: str) -> None:
        check_for_saving(playbook, source)

    def check_run(self, playbook: str, source: str, params: Params) -> None:
        """PlaybookError naming every problem a run with `params` would have (a schedule's);
        ProblemsError naming each secret param given: a schedule is stored, and a secret's
        value never is (CONTRACT §10)."""
        prepared = prepare_playbook(playbook, params, source=source)
        if prepared.secrets:
            raise ProblemsError(
                [
                    Problem(
                        ("params", name),
                        f"params.{name}: a secret param cannot be kept in a schedule",
                    )
                    for name in sorted(prepared.secrets)
                ]
            )

    def playbook_queues(
        self,
        playbook: PlaybookSource,
        params: Params = None,
        *,
        source: str = REQUEST_SOURCE,
    ) -> frozenset[str] | None:
        spec = prepare_playbook(playbook, params, source=source).spec()
        return queues_of(spec, self.settings.default_queue)

    def _not_queued(self, execution_id: str, error: BrokerUnavailableError) -> None:
        """The record exists but its task could not be sent: end it (`failed`) rather than
        leave it `queued` forever; the caller is told (a 503). Should the task have reached
        the broker after all, its claim refuses an ended execution."""
        Reporter(self.rt.publisher, execution_id).complete(
            Status.FAILED,
            utc_now(),
            error=f"not queued: the broker ({error.broker}) is unavailable",
        )
        # Not notified: its task could not be sent, nor could a notification's, and trying
        # would hold the caller's 503 for another broker timeout; the caller is the one told.
        finish(self.rt, execution_id, self.tasks, notify=False)

    def cancel(self, execution_id: str, *, cancelled_by: str | None = None) -> None:
        """Cancel a queued or running execution (its record names `cancelled_by`).
        UnknownExecutionError if there is none, ExecutionEndedError if it already ended
        (nothing changes then)."""
        rt = self.rt
        found = rt.records.request_cancel(execution_id, cancelled_by)
        if found == Outcome.UNKNOWN:
            raise UnknownExecutionError(execution_id)
        if found.startswith(Outcome.ENDED + ":"):
            raise ExecutionEndedError(execution_id, found.split(":", 1)[1])
        task_id, started_at = rt.records.fields(execution_id, F.TASK_ID, F.STARTED_AT)
        task_id = task_id or execution_id
        if found == Outcome.QUEUED:
            # Queued, waiting for a playbook slot, or a playbook between two steps: no worker
            # holds it. The task is discarded by whichever worker receives it; the claim
            # refuses it anyway.
            self.tasks.revoke(task_id, terminate=False)
            cancel_unstarted(
                Reporter(rt.publisher, execution_id),
                wait=True,
                started_at=started_at,
                partial_output=playbook_output_tail(rt, execution_id) if started_at else "",
            )
            finish(rt, execution_id, self.tasks)
            return
        # Running: the task is stopped where it runs, and kills the command's whole tree. If
        # the revoke is missed, the watchdog sees the cancel mark within cancel_poll_interval_s.
        self.tasks.revoke(task_id, terminate=True)
