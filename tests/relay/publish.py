"""Publish a scripted execution from the test process with the real Publisher, in a thread,
so that the relay process only relays (its memory and CPU are then the relay's own)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import redis

from events.keys import Keys
from events.lifecycle import Reporter
from events.models import ExecutionOptions, utc_now
from events.publisher import Publisher
from events.record_store import RecordStore
from events.settings import Settings
from events.vocabulary import CommandType, Status


class ScriptedRun(threading.Thread):
    """Publishes started, one execution_output per chunk, complete; `rate_per_s` paces it."""

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        execution_id: str,
        chunks: Sequence[str],
        *,
        rate_per_s: float | None = None,
        start_event: threading.Event | None = None,
    ) -> None:
        super().__init__(daemon=True, name=f"publish-{execution_id}")
        self.keys = Keys(settings.key_prefix)
        self.publisher = Publisher(client, self.keys, settings)
        self.execution_id = execution_id
        self.chunks = chunks
        self.rate_per_s = rate_per_s
        self.start_event = start_event
        self.published = 0
        self.finished_at: float | None = None
        self.error: BaseException | None = None
        RecordStore(client, self.keys, settings).create(
            execution_id,
            command="scripted",
            command_type=CommandType.SCRIPT,
            options={},
            queued_at=utc_now(),
        )

    @property
    def total_events(self) -> int:
        return len(self.chunks) + 2

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # reported by the test through .error
            self.error = e

    def _run(self) -> None:
        pub = self.publisher
        reporter = Reporter(pub, self.execution_id)
        if self.start_event is not None:
            self.start_event.wait()
        started = reporter.started("scripted", CommandType.SCRIPT, ExecutionOptions())
        t0 = time.monotonic()
        for n, chunk in enumerate(self.chunks, start=1):
            reporter.output("stdout", chunk)
            self.published = n
            if self.rate_per_s and n % 20 == 0:
                ahead_s = n / self.rate_per_s - (time.monotonic() - t0)
                if ahead_s > 0:
                    time.sleep(ahead_s)
            if n % 500 == 0:
                pub.flush(30)  # keep the publisher's buffer small: nothing dropped
        reporter.complete(Status.COMPLETED, started, exit_code=0)
        pub.close(30)
        self.finished_at = time.monotonic()
