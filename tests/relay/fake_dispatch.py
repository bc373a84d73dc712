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
from typing import Any

import yaml

from events.errors import ExecutionEndedError, InvalidRequestError, UnknownExecutionError
from events.keys import Keys
from events.models import (
    CommandType,
    ExecutionCancelledPayload,
    ExecutionCompletePayload,
    ExecutionOptions,
    ExecutionOutputPayload,
    ExecutionStartedPayload,
    PlaybookStepCompletePayload,
    PlaybookStepStartPayload,
    utc_now,
)
from events.publisher import Publisher, make_redis
from events.records import RecordStore, StepRecord
from events.settings import Settings


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
    def submit_command(
        self, command: str, command_type: str, options: ExecutionOptions | None = None
    ) -> str:
        if command_type not in ("aws_cli", "script"):
            raise InvalidRequestError("commandType", "must be aws_cli or script")
        if not command.strip():
            raise InvalidRequestError("command", "must not be empty")
        opts = options or ExecutionOptions()
        execution_id = self._create(command, command_type, opts.wire())
        self._start(self._run_command, execution_id, command, command_type, opts)
        return execution_id

    def submit_playbook(
        self,
        playbook: str | Mapping[str, Any],
        params: Mapping[str, str] | None = None,
        *,
        source: str = "<request>",
    ) -> str:
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
        name = str(doc.get("name") or "playbook")
        execution_id = self._create(
            name,
            "playbook",
            {},
            steps=[StepRecord(step_id=s, step_name=nm) for s, nm, _ in parsed],
        )
        self._start(self._run_playbook, execution_id, name, parsed)
        return execution_id

    def cancel(self, execution_id: str) -> None:
        found = self.records.request_cancel(execution_id)
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
        command_type: str,
        options: Mapping[str, Any],
        steps: list[StepRecord] | None = None,
    ) -> str:
        execution_id = "ex_" + uuid.uuid4().hex[:20]
        self.records.create(
            execution_id,
            command=command,
            command_type=command_type,
            options=options,
            queued_at=utc_now(),
            steps=steps,
        )
        with self._lock:
            self._cancels[execution_id] = threading.Event()
        return execution_id

    def _start(self, target: Any, *args: Any) -> None:
        threading.Thread(target=target, args=args, daemon=True).start()

    def _started(self, ex: str, command: str, kind: CommandType, opts: ExecutionOptions) -> str:
        at = utc_now()
        self.publisher.publish(
            ExecutionStartedPayload(
                execution_id=ex,
                command=command,
                command_type=kind,
                started_at=at,
                options=opts,
                worker="fake",
            ),
            record={"status": "running", "startedAt": at, "worker": "fake"},
        )
        return at

    def _complete(self, ex: str, started_at: str, exit_code: int | None, cancelled: bool) -> None:
        at = utc_now()
        if cancelled:
            self.publisher.publish(
                ExecutionCancelledPayload(
                    execution_id=ex, cancelled_at=at, reason="cancelled by user", partial_output=""
                )
            )
        status = "cancelled" if cancelled else ("completed" if exit_code == 0 else "failed")
        ms = 1
        record: dict[str, str | int] = {"status": status, "completedAt": at, "durationMs": ms}
        if exit_code is not None:
            record["exitCode"] = exit_code
        self.publisher.publish(
            ExecutionCompletePayload(
                execution_id=ex,
                status=status,
                started_at=started_at,
                completed_at=at,
                duration_ms=ms,
                exit_code=exit_code,
                worker="fake",
            ),
            record=record,
        )
        with self._lock:
            self._cancels.pop(ex, None)

    def _output(self, ex: str, text: str, step_id: str | None = None) -> None:
        self.publisher.publish(
            ExecutionOutputPayload(
                execution_id=ex, output=text, stream="stdout", timestamp=utc_now(), step_id=step_id
            )
        )

    def _run_command(
        self, ex: str, command: str, kind: CommandType, opts: ExecutionOptions
    ) -> None:
        script = script_of(command)
        cancel = self._cancels[ex]
        started_at = self._started(ex, command, kind, opts)
        lines = output_lines(script["lines"])
        step = max(1, script["chunk"])
        for i in range(0, len(lines), step):
            if cancel.is_set():
                break
            self._output(ex, "".join(lines[i : i + step]))
            if script["interval_ms"]:
                time.sleep(script["interval_ms"] / 1000)
        if script["hold"] and not cancel.is_set():
            cancel.wait(60)
        if cancel.is_set():
            self._complete(ex, started_at, None, cancelled=True)
        else:
            self._complete(ex, started_at, script["exit"], cancelled=False)

    def _run_playbook(self, ex: str, name: str, steps: list[tuple[str, str, str]]) -> None:
        started_at = self._started(ex, name, "playbook", ExecutionOptions())
        for n, (sid, sname, command) in enumerate(steps, start=1):
            self.publisher.publish(
                PlaybookStepStartPayload(
                    execution_id=ex,
                    step_id=sid,
                    step_number=n,
                    total_steps=len(steps),
                    step_name=sname,
                    command=command,
                ),
                record={f"step:{n}": '{"status": "running"}'},
            )
            self._output(ex, f"{command}\n", step_id=sid)
            self.publisher.publish(
                PlaybookStepCompletePayload(
                    execution_id=ex,
                    step_id=sid,
                    step_number=n,
                    step_name=sname,
                    success=True,
                    exit_code=0,
                    duration_ms=1,
                    continue_on_error=False,
                ),
                record={f"step:{n}": '{"status": "completed", "exitCode": 0, "durationMs": 1}'},
            )
        self._complete(ex, started_at, 0, cancelled=False)
