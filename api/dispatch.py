"""What the relay needs of the side that runs executions; injected by the composition root.

`api/` never starts a process: it asks a Dispatcher (worker.dispatcher.Dispatcher on a fleet
and in embedded mode, a scripted one in the relay's tests) to start and cancel executions, and
only reads what they publish.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, Unpack

from events.db.playbooks import PlaybookStore, SavedPlaybook
from events.requests import REQUEST_SOURCE, Params, PlaybookSource, ScheduledTick
from events.rerun import RerunHosts, RerunSource
from events.starts import CommandStart, Origin, PlaybookStart


class Dispatcher(Protocol):
    def submit_command(self, command: str, command_type: str, **start: Unpack[CommandStart]) -> str:
        """Queue a command; return its execution id. `command_type` is aws_cli or script;
        InvalidRequestError names the bad field. `start`: its options and who asks
        (events.starts.CommandStart)."""
        ...

    def submit_playbook(
        self, playbook: PlaybookSource, params: Params = None, **start: Unpack[PlaybookStart]
    ) -> str:
        """Validate and queue a playbook (YAML text or parsed object); return its id. A bad
        playbook or params raise events.errors.ProblemsError listing every problem. `start`:
        where it came from, the saved playbook and schedule tick it is the run of, who asks
        (events.starts.PlaybookStart)."""
        ...

    def rerun(
        self, source: RerunSource, hosts: RerunHosts, params: Params = None, **start: Unpack[Origin]
    ) -> str:
        """Queue a new execution rerunning what of ended execution `source` did not succeed
        (events.rerun.plan_rerun decides what); its id, its record naming `rerunOf` (and
        `submittedBy`: `start`'s `submitted_by`).
        CannotRerunError (a 409) when it has not ended or nothing is left to rerun. `params`:
        the old run's secret params, given again (never stored: a ProblemsError names each
        one missing)."""
        ...

    def check_playbook(self, playbook: str, source: str) -> None:
        """Validate a playbook about to be saved (InvalidRequestError naming the problems);
        the params of its runs are not known yet."""
        ...

    def playbook_queues(
        self, playbook: PlaybookSource, params: Params = None, *, source: str = REQUEST_SOURCE
    ) -> frozenset[str] | None:
        """The queues a run of this playbook would run on (events.scope.queues_of), checked
        and rendered as a submit would, without submitting it."""
        ...

    def cancel(self, execution_id: str, *, cancelled_by: str | None = None) -> None:
        """Cancel a queued or running execution; its record names `cancelled_by`.

        Raises UnknownExecutionError if there is no such execution and ExecutionEndedError if
        it already ended (nothing changes then).
        """
        ...


def start_saved(
    dispatcher: Dispatcher,
    store: PlaybookStore,
    name: str,
    params: Params = None,
    *,
    version: int | None = None,
    submitted_by: str | None = None,
    schedule: ScheduledTick | None = None,
    check: Callable[[SavedPlaybook], None] | None = None,
) -> str:
    """Start saved playbook `name` (its latest version, or `version`): the one way a run by
    name starts, from the relay, the CLI without one, and a schedule's tick (blocking: the
    database, then the dispatcher). `check` may refuse the version found, by raising (the
    relay's queue scope)."""
    saved = store.for_run(name, version)
    if check is not None:
        check(saved)
    return dispatcher.submit_playbook(
        saved.yaml,
        params,
        source=saved.source,
        saved=saved.ref,
        submitted_by=submitted_by,
        schedule=schedule,
    )


class Service(Protocol):
    """Something the composition root runs beside the relay for its lifetime (the lost-worker
    reaper, the history archiver): started when the relay starts, stopped when it stops."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class HealthCheck(Protocol):
    """A dependency of the relay's routes besides its Redis (the broker), that /healthz
    checks: injected by the composition root like the Dispatcher."""

    @property
    def name(self) -> str:
        """How /healthz names it: `broker (RabbitMQ)`."""
        ...

    def check(self) -> None:
        """Return when it answers, raise (anything) when not; bounded in time, run in a
        thread."""
        ...
