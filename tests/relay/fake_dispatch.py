"""A Dispatcher for relay tests that needs no Celery: it writes the record and publishes a
scripted run with the real `events.publisher.Publisher`, from a thread of the relay process.

The command is a script of `key=value` words (anything else is ignored):
    lines=N        output N lines "line 000001\\n"... (default 3)
    chunk=K        K lines per execution_output event (default 1)
    interval_ms=M  pause between chunks (default 0)
    hold=1         after the output, wait for cancel (at most 60 s) before completing
    exit=C         exit code (default 0: completed, else failed)
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any, Unpack

import yaml

from events.clients import make_redis
from events.errors import ExecutionEndedError, InvalidRequestError, UnknownExecutionError
from events.keys import Keys
from events.lifecycle import Reporter
from events.models import ExecutionOptions, utc_now
from events.publisher import Publisher
from events.record_store import RecordStore
from events.records import StepRecord
from events.requests import REQUEST_SOURCE, Params, PlaybookSource
from events.rerun import RerunHosts, RerunSource, plan_rerun
from events.settings import Settings
from events.starts import CommandStart, Origin, PlaybookStart, source_of
from events.vocabulary import COMMAND_TYPES, CommandType, RecordField, Status
from tests.helpers import publish_passing_step
from worker.playbook.loading import check_for_saving


def script_of(command: str) -> dict[str, int]:
    out = {"lines": 3, "chunk": 1, "interval_ms": 0, "hold": 0, "exit": 0}
    for word in command.split():
        key, sep, value = word.partition("=")
        if sep and key in out and value.lstrip("-").isdigit():
            out[key] = int(value)
    return out


def output_lines(n: int) -> list[str]:
    return [f"line {i:06d}\n" for i in range(1, n + 1)]


class FakeDispatcher:
    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url is not None
        self.settings = settings
        self.client = make_redis(settings.redis_url)
        self.keys = Keys(settings.key_prefix)
        self.records = RecordStore(self.client, self.keys, settings)
        self.publisher = Publisher(self.client, self.keys, settings)
        self._cancels: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    # -- Dispatcher ------------------------------------------------------------------------
    def submit_command(self, command: str, command_type: str, **start: Unpack[CommandStart]) -> str:
        if command_type not in COMMAND_TYPES:
            raise InvalidRequestError("commandType", "must be aws_cli or script")
        if not command.strip():
            raise InvalidRequestError("command", "must not be empty")
        opts = start.get("options") or ExecutionOptions()
        kind = CommandType(command_type)
        execution_id = self._create(
            command,
            kind,
            opts.wire(),
            spec={"command": command, "commandType": kind, "options": opts.wire()},
        )
        self._start(self._run_command, execution_id, command, kind, opts)
        return execution_id

    def submit_playbook(
        self, playbook: PlaybookSource, params: Params = None, **start: Unpack[PlaybookStart]
    ) -> str:
        source = source_of(start)
        try:
            doc = yaml.safe_load(playbook) if isinstance(playbook, str) else playbook
        except yaml.YAMLError as e:
            raise InvalidRequestError("playbook", f"{source}: not YAML: {e}") from e
        if not isinstance(doc, Mapping):
            raise InvalidRequestError("playbook", f"{source}: must be a mapping")
        steps = doc.get("steps")
        if not isinstance(steps, list) or not steps:
            raise InvalidRequestError("playbook.steps", f"{source}: must be a non-empty list")
        parsed: list[tuple[str, str, str]] = []
        for n, step in enumerate(steps, start=1):
            if not isinstance(step, Mapping) or not isinstance(step.get("command"), str):
                raise InvalidRequestError(f"playbook.steps[{n}].command", "is required")
            sid = str(step.get("id") or f"step_{n}")
            parsed.append((sid, str(step.get("name") or sid), step["command"]))
        return self._queue_playbook(str(doc.get("name") or "playbook"), parsed)

    def _queue_playbook(
        self, name: str, parsed: list[tuple[str, str, str]], extra: Mapping[str, str] = {}
    ) -> str:
        execution_id = self._create(
            name,
            CommandType.PLAYBOOK,
            {},
            steps=[StepRecord(step_id=s, step_name=nm) for s, nm, _ in parsed],
            spec={"playbook": name, "steps": [list(p) for p in parsed]},
            extra=extra,
        )
        self._start(self._run_playbook, execution_id, name, parsed)
        return execution_id

    def rerun(
        self, source: RerunSource, hosts: RerunHosts, params: Params = None, **start: Unpack[Origin]
    ) -> str:
        """The real rule (events.rerun) over the scripted runs: a command again, or the steps
        of a playbook from the first that did not succeed (these never fan out)."""
        plan = plan_rerun(source, hosts)
        spec = source.spec or {}
        extra: dict[str, str] = {RecordField.RERUN_OF: source.execution_id}
        if submitted_by := start.get("submitted_by"):
            extra[RecordField.SUBMITTED_BY] = submitted_by
        if "steps" in spec:
            steps = [(s, n, c) for s, n, c in spec["steps"][plan.start_index :]]
            return self._queue_playbook(str(spec["playbook"]), steps, extra)
        opts = ExecutionOptions.model_validate(spec.get("options") or {})
        kind = CommandType(spec["commandType"])
        execution_id = self._create(spec["command"], kind, opts.wire(), spec=spec, extra=extra)
        self._start(self._run_command, execution_id, spec["command"], kind, opts)
        return execution_id

    def check_playbook(self, playbook: str, source: str) -> None:
        check_for_saving(playbook, source)  # the real rule: what is saved must be runnable

    def playbook_queues(
        self, playbook: PlaybookSource, params: Params = None, *, source: str = REQUEST_SOURCE
    ) -> frozenset[str] | None:
        """The scripted runs run where a real run would not: on the default queue."""
        return frozenset({self.settings.default_queue})

    def cancel(self, execution_id: str, *, cancelled_by: str | None = None) -> None:
        found = self.records.request_cancel(execution_id, cancelled_by)
        if found == "unknown":
            raise UnknownExecutionError(execution_id)
        if found.startswith("ended:"):
            raise ExecutionEndedError(execution_id, found.split(":", 1)[1])
        with self._lock:
            ev = self._cancels.get(execution_id)
        if ev is not None:
            ev.set()

    def close(self) -> None:
        self.publisher.close()

    # -- the scripted runs -------------------------------------------------------------------
    def _create(
        self,
        command: str,
        command_type: CommandType,
        options: Mapping[str, Any],
        steps: list[StepRecord] | None = None,
        *,
        spec: Mapping[str, Any],
        extra: Mapping[str, str] = {},
    ) -> str:
        execution_id = "ex_" + uuid.uuid4().hex[:20]
        self.records.create(
            execution_id,
            command=command,
            command_type=command_type,
            options=options,
            queued_at=utc_now(),
            steps=steps,
            spec=spec,
            extra=extra,
        )
        with self._lock:
            self._cancels[execution_id] = threading.Event()
        return execution_id

    def _start(self, target: Any, *args: Any) -> None:
        threading.Thread(target=target, args=args, daemon=True).start()

    def _end(self, reporter: Reporter, started_at: str, exit_code: int | None) -> None:
        """Cancelled + complete(cancelled) with no exit code, else complete by the code."""
        if exit_code is None:
            reporter.cancelled("cancelled by user", "")
            reporter.complete(Status.CANCELLED, started_at)
        else:
            status = Status.COMPLETED if exit_code == 0 else Status.FAILED
            reporter.complete(status, started_at, exit_code=exit_code)
        with self._lock:
            self._cancels.pop(reporter.execution_id, None)

    def _run_command(
        self, ex: str, command: str, kind: CommandType, opts: ExecutionOptions
    ) -> None:
        script = script_of(command)
        cancel = self._cancels[ex]
        reporter = Reporter(self.publisher, ex, worker="fake")
        started_at = reporter.started(command, kind, opts)
        lines = output_lines(script["lines"])
        step = max(1, script["chunk"])
        for i in range(0, len(lines), step):
            if cancel.is_set():
                break
            reporter.output("stdout", "".join(lines[i : i + step]))
            if script["interval_ms"]:
                time.sleep(script["interval_ms"] / 1000)
        if script["hold"] and not cancel.is_set():
            cancel.wait(60)
        self._end(reporter, started_at, None if cancel.is_set() else script["exit"])

    def _run_playbook(self, ex: str, name: str, steps: list[tuple[str, str, str]]) -> None:
        reporter = Reporter(self.publisher, ex, worker="fake")
        started_at = reporter.started(name, CommandType.PLAYBOOK, ExecutionOptions())
        for n, step in enumerate(steps, start=1):
            command = step[2]
            publish_passing_step(reporter, n, len(steps), step, [f"{command}\n"], duration_ms=1)
        self._end(reporter, started_at, 0)
