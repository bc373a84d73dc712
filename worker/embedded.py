"""In-process execution with an in-memory bus: the product with no Redis and no worker.

`MemoryBus` is a Sink with the publisher's guarantees (contiguous ids per execution, nothing
after `execution_complete`, records updated with their event) and `EmbeddedDispatcher` runs
each execution in a thread with the same executor and the same events as a Celery worker.
"""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from events.errors import ExecutionEndedError, UnknownExecutionError
from events.lifecycle import Reporter, Sink
from events.models import (
    CommandType,
    ExecutionOptions,
    RawEvent,
    WireModel,
    encode_parts,
    event_name,
    utc_now,
)
from events.records import ExecutionRecord, RecordStore, record_from_hash
from events.settings import Settings
from worker.commands import command_spec, validate_command
from worker.dispatch import new_execution_id
from worker.executor import Executor, StopReason
from worker.playbook import PreparedPlaybook, prepare_playbook
from worker.runner import cancel_unstarted, run_command
from worker.steps import play

Listener = Callable[[str, RawEvent], None]


class MemoryBus:
    def __init__(self, max_events_per_execution: int = 1_000_000) -> None:
        self._lock = threading.Lock()
        self._history: dict[str, list[RawEvent]] = {}
        self._records: dict[str, dict[str, str]] = {}
        self._order: list[str] = []
        self._listeners: list[Listener] = []
        self._max = max_events_per_execution

    # -- Sink
    def publish(
        self,
        payload: WireModel,
        *,
        record: Mapping[str, str | int] | None = None,
        wait: bool = False,
    ) -> int | None:
        execution_id: str = payload.execution_id  # type: ignore[attr-defined]
        name = event_name(payload)
        head, tail = encode_parts(name, execution_id, payload)
        with self._lock:
            rec = self._records.setdefault(execution_id, {"executionId": execution_id})
            if "completeId" in rec:
                return None
            events = self._history.setdefault(execution_id, [])
            seq = (events[-1].id if events else 0) + 1
            ev = RawEvent(seq, name, head + str(seq) + tail)
            if len(events) < self._max:
                events.append(ev)
            rec.update({k: str(v) for k, v in (record or {}).items()})
            if name == "execution_complete":
                rec["completeId"] = str(seq)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(execution_id, ev)
        return seq

    # -- records
    def create(self, execution_id: str, fields: Mapping[str, str]) -> None:
        with self._lock:
            self._records[execution_id] = {"executionId": execution_id, **fields}
            self._order.append(execution_id)

    def record(self, execution_id: str) -> ExecutionRecord | None:
        with self._lock:
            raw = dict(self._records.get(execution_id, {}))
        return record_from_hash(raw) if raw.get("status") else None

    def records(self) -> list[ExecutionRecord]:
        with self._lock:
            ids = list(reversed(self._order))
        return [r for r in (self.record(i) for i in ids) if r is not None]

    def history(self, execution_id: str, after: int = 0) -> list[RawEvent]:
        with self._lock:
            return [e for e in self._history.get(execution_id, []) if e.id > after]

    # -- live
    def add_listener(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    def follow(self, execution_id: str, after: int = 0) -> Iterator[RawEvent]:
        """History after `after`, then live, until execution_complete."""
        q: queue.Queue[RawEvent] = queue.Queue()
        remove = self.add_listener(lambda ex, ev: q.put(ev) if ex == execution_id else None)
        try:
            last = after
            for ev in self.history(execution_id, after):
                last = ev.id
                yield ev
                if ev.terminal:
                    return
            while True:
                ev = q.get()
                if ev.id <= last:
                    continue
                last = ev.id
                yield ev
                if ev.terminal:
                    return
        finally:
            remove()


class LocalBus(Protocol):
    """What the embedded dispatcher needs of a bus: a Sink plus record creation and lookup."""

    def publish(
        self,
        payload: WireModel,
        *,
        record: Mapping[str, str | int] | None = None,
        wait: bool = False,
    ) -> int | None: ...

    def create(self, execution_id: str, fields: Mapping[str, str]) -> None: ...

    def record(self, execution_id: str) -> ExecutionRecord | None: ...


class RedisBus:
    """A LocalBus on Redis: the embedded relay runs executions in-process but keeps events and
    records where the relay reads them (its own in-process Redis, see `cloudops relay
    --embedded`)."""

    def __init__(self, publisher: Sink, records: RecordStore) -> None:
        self._publisher = publisher
        self._records = records

    def publish(
        self,
        payload: WireModel,
        *,
        record: Mapping[str, str | int] | None = None,
        wait: bool = False,
    ) -> int | None:
        return self._publisher.publish(payload, record=record, wait=wait)

    def create(self, execution_id: str, fields: Mapping[str, str]) -> None:
        self._records.create_raw(execution_id, fields)

    def record(self, execution_id: str) -> ExecutionRecord | None:
        return self._records.get(execution_id)


class EmbeddedDispatcher:
    """Runs executions in threads of this process; same events as the Celery fleet."""

    def __init__(self, settings: Settings, bus: LocalBus | None = None) -> None:
        self.settings = settings
        self.bus: LocalBus = bus or MemoryBus()
        self.worker = f"embedded@{socket.gethostname()}"
        self._executors: dict[str, Executor] = {}
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        # max_concurrent: runs holding a slot per playbook name; waiters wait on the condition.
        self._slots: dict[str, int] = {}
        self._slot_freed = threading.Condition(self._lock)

    def submit_command(
        self, command: str, command_type: str, options: ExecutionOptions | None = None
    ) -> str:
        validate_command(command, command_type)
        opts = options or ExecutionOptions()
        execution_id = new_execution_id()
        self.bus.create(
            execution_id,
            {
                "command": command,
                "commandType": command_type,
                "status": "queued",
                "options": json.dumps(opts.wire()),
                "queuedAt": utc_now(),
            },
        )
        ct: CommandType = "aws_cli" if command_type == "aws_cli" else "script"
        threading.Thread(
            target=self._run,
            args=(execution_id, command, ct, opts),
            name=f"cloudops-{execution_id}",
            daemon=True,
        ).start()
        return execution_id

    def submit_playbook(
        self,
        playbook: str | Mapping[str, Any],
        params: Mapping[str, str] | None = None,
        *,
        source: str = "<request>",
    ) -> str:
        """Validate (PlaybookError before anything exists), then run it in a thread."""
        prepared = prepare_playbook(playbook, params, source=source)
        execution_id = new_execution_id()
        self.bus.create(
            execution_id,
            {
                "command": prepared.name,
                "commandType": "playbook",
                "status": "queued",
                "options": json.dumps(prepared.options.wire()),
                "queuedAt": utc_now(),
                "steps": json.dumps([s.model_dump(by_alias=True) for s in prepared.step_records()]),
            },
        )
        threading.Thread(
            target=self._run_playbook,
            args=(execution_id, prepared),
            name=f"cloudops-{execution_id}",
            daemon=True,
        ).start()
        return execution_id

    def cancel(self, execution_id: str) -> None:
        rec = self.bus.record(execution_id)
        if rec is None:
            raise UnknownExecutionError(execution_id)
        if rec.terminal:
            raise ExecutionEndedError(execution_id, rec.status)
        with self._lock:
            self._cancelled.add(execution_id)
            executor = self._executors.get(execution_id)
            self._slot_freed.notify_all()  # a run waiting for a slot gives up
        if executor is not None:
            executor.request_stop(StopReason.CANCELLED)

    def _run(
        self, execution_id: str, command: str, command_type: CommandType, opts: ExecutionOptions
    ) -> None:
        reporter = Reporter(self.bus, execution_id, worker=self.worker)
        with self._lock:
            if execution_id in self._cancelled:
                cancel_unstarted(reporter)
                return
        spec = command_spec(command, command_type, opts)
        run_command(
            reporter,
            self.settings,
            command=command,
            command_type=command_type,
            options=opts,
            spec=spec,
            watch=self._watcher(execution_id),
            cancel_confirmed=lambda: execution_id in self._cancelled,
        )

    def _run_playbook(self, execution_id: str, prepared: PreparedPlaybook) -> None:
        reporter = Reporter(self.bus, execution_id, worker=self.worker)
        name, limit = prepared.name, prepared.max_concurrent
        if not self._take_slot(execution_id, name, limit):
            cancel_unstarted(reporter)
            return
        try:
            play(
                reporter,
                self.settings,
                name,
                prepared.options,
                prepared.steps,
                watch=self._watcher(execution_id),
                cancel_confirmed=lambda: execution_id in self._cancelled,
            )
        finally:
            self._release_slot(name, limit)

    def _take_slot(self, execution_id: str, name: str, limit: int | None) -> bool:
        """Wait (queued) for one of the playbook's `limit` slots; False if cancelled first."""
        with self._lock:
            while limit and self._slots.get(name, 0) >= limit:
                if execution_id in self._cancelled:
                    return False
                self._slot_freed.wait()
            if execution_id in self._cancelled:
                return False
            if limit:
                self._slots[name] = self._slots.get(name, 0) + 1
            return True

    def _release_slot(self, name: str, limit: int | None) -> None:
        if limit:
            with self._lock:
                self._slots[name] -= 1
                self._slot_freed.notify_all()

    def _watcher(self, execution_id: str) -> Callable[[Executor], Any]:
        """Per attempt: make the executor reachable by cancel(), and stop it if already asked."""

        @contextlib.contextmanager
        def watch(executor: Executor) -> Iterator[None]:
            with self._lock:
                self._executors[execution_id] = executor
                if execution_id in self._cancelled:
                    executor.request_stop(StopReason.CANCELLED)
            try:
                yield
            finally:
                with self._lock:
                    self._executors.pop(execution_id, None)

        return watch
