"""Genuine records and histories in Redis, written the way the project writes them: records
through events.records.RecordStore, events through events.lifecycle.Reporter on an
events.publisher.Publisher (as the workers do), so the archiver sees real envelopes."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis

from events.keys import Keys
from events.lifecycle import Reporter
from events.models import ExecutionOptions, utc_now
from events.publisher import Publisher
from events.record_store import RecordStore
from events.records import StepRecord
from events.settings import Settings
from events.vocabulary import CommandType, Status
from tests.helpers import publish_passing_step, queued_record


class Scenario:
    """Executions published under one key prefix; `close()` waits until Redis has them all."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.records = RecordStore(client, self.keys, settings)
        self.publisher = Publisher(client, self.keys, settings)
        self.ids: list[str] = []

    def close(self) -> None:
        assert self.publisher.flush(60.0), "the publisher did not drain"
        self.publisher.close()

    def flush(self) -> None:
        assert self.publisher.flush(60.0), "the publisher did not drain"

    def _new(self, execution_id: str | None) -> str:
        ex = execution_id or f"ex_{self.settings.key_prefix}_{len(self.ids):05d}"
        self.ids.append(ex)
        return ex

    def _create(
        self,
        ex: str,
        command: str,
        command_type: CommandType,
        spec: dict[str, Any] | None = None,
        **more: Any,
    ) -> None:
        """Its record, queued now without options; `spec` a command's unless given."""
        if spec is None:
            spec = {"command": command, "commandType": command_type, "options": {}}
        queued_record(self.records, ex, command_type, spec, command, **more)

    def command(
        self,
        command: str,
        outputs: Sequence[tuple[str, str]] = (),
        *,
        status: Status = Status.COMPLETED,
        exit_code: int | None = 0,
        worker: str = "w1@test",
        execution_id: str | None = None,
        end: bool = True,
        extra: dict[str, str] | None = None,
    ) -> str:
        """A command (script or aws_cli) that prints `outputs` (stream, text) and ends."""
        ex = self._new(execution_id)
        command_type = CommandType.of_command(command)
        self._create(ex, command, command_type, extra=extra)
        assert self.records.claim(ex, worker, ex) == "ok"
        rep = Reporter(self.publisher, ex, worker=worker)
        started = rep.started(command, command_type, ExecutionOptions())
        for stream, text in outputs:
            rep.output(stream, text)  # type: ignore[arg-type]
        if not end:
            return ex
        if status == "cancelled":
            self.flush()
            self.records.request_cancel(ex)
            rep.cancelled("cancelled by user", "".join(t for _, t in outputs)[-100:])
        rep.complete(
            status,
            started,
            exit_code=exit_code,
            error=None if status == "completed" else status,
        )
        self.records.release(ex)
        return ex

    def output(self, ex: str, text: str, worker: str = "w1@test") -> None:
        """More output of a command left running by `command(..., end=False)`."""
        Reporter(self.publisher, ex, worker=worker).output("stdout", text)

    def finish(self, ex: str, worker: str = "w1@test") -> None:
        """End a command left running by `command(..., end=False)`."""
        rep = Reporter(self.publisher, ex, worker=worker)
        started = self.records.field(ex, "startedAt") or utc_now()
        rep.complete(Status.COMPLETED, started, exit_code=0)
        self.records.release(ex)

    def playbook(
        self,
        name: str,
        steps: Sequence[tuple[str, str, Sequence[str]]],
        *,
        execution_id: str | None = None,
    ) -> str:
        """A playbook of `steps` (id, name, output lines), each step on its own host."""
        ex = self._new(execution_id)
        records = [StepRecord(step_id=sid, step_name=sname) for sid, sname, _ in steps]
        self._create(
            ex,
            name,
            CommandType.PLAYBOOK,
            spec={"name": name, "steps": [sid for sid, _, _ in steps]},
            steps=records,
            extra={"stepQueued": "0", "taskId": f"{ex}-0"},
        )
        assert self.records.claim(ex, "w1@test", f"{ex}-0", step=0) == "ok"
        first = Reporter(self.publisher, ex, worker="w1@test")
        started = first.started(name, CommandType.PLAYBOOK, ExecutionOptions())
        for n, (sid, sname, lines) in enumerate(steps, start=1):
            rep = Reporter(self.publisher, ex, worker=f"w{n}@test")
            step = (sid, sname, f"echo {sid}")
            publish_passing_step(rep, n, len(steps), step, lines, duration_ms=5)
        first.complete(Status.COMPLETED, started, exit_code=0)
        self.records.release(ex)
        return ex

    def queued(self, command: str, *, execution_id: str | None = None) -> str:
        """A command waiting in the queue: a record, no event yet."""
        ex = self._new(execution_id)
        self._create(ex, command, CommandType.SCRIPT)
        return ex

    # -- what Redis holds ----------------------------------------------------------------
    def redis_record(self, ex: str) -> dict[str, Any] | None:
        rec = self.records.get(ex)
        return None if rec is None else rec.wire()

    def redis_events(self, ex: str) -> list[tuple[int, bytes]]:
        """(id, envelope bytes) of the history, exactly as XRANGE returns them."""
        entries: Any = self.client.xrange(self.keys.history(ex))
        return [(int(i.decode().split("-")[0]), f[b"e"]) for i, f in entries]

    def delete_all(self) -> int:
        """Every key of this prefix (records, histories, index...): Redis forgets it all."""
        n = 0
        for key in self.client.scan_iter(match=f"{self.settings.key_prefix}:*", count=1000):
            n += int(self.client.delete(key))
        return n


def random_output(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """`n` output chunks of mixed sizes and streams: lines, bursts, unicode, escapes."""
    words = ["deploy", "ok", "Ünïcödé", "tab\tsep", 'quote"d', "back\\slash", "日本語", "✓"]
    out: list[tuple[str, str]] = []
    for i in range(n):
        size = rng.choice([1, 2, 3, 10, 40, 400])
        text = " ".join(rng.choice(words) for _ in range(size)) + f" #{i}\n"
        out.append(("stderr" if rng.random() < 0.2 else "stdout", text))
    return out


@contextmanager
def scenario(client: redis.Redis, settings: Settings) -> Iterator[Scenario]:
    s = Scenario(client, settings)
    try:
        yield s
    finally:
        s.close()
