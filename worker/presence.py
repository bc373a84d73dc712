"""A host's entry in the registry (events/hosts.py), kept fresh by a thread of the process that
runs its executions: a Celery worker's main process (started on worker_ready by cli/worker.py),
or embedded mode's one in-process worker (cli/wiring.py)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence

import redis
from celery.worker import state

from events.hosts import HostRegistry, entry_for
from events.keys import Keys

log = logging.getLogger(__name__)


def celery_running() -> int:
    """Tasks this Celery worker runs now: those its pool accepted and that have not ended
    (kept by Celery in the main process); tasks it holds in reserve are not running."""
    return len(state.active_requests)


class Presence:
    """Writes this host's entry now and every `interval_s` until stopped; `stop()` marks it
    offline at once. A failed write is logged and retried at the next beat: the registry is a
    side effect and never stops the worker."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        hostname: str,
        *,
        queues: Sequence[str],
        labels: Mapping[str, str],
        concurrency: int,
        running: Callable[[], int],
        interval_s: float,
    ) -> None:
        self._client = client
        self._registry = HostRegistry(keys)
        self.hostname = hostname
        self._queues = tuple(queues)
        self._labels = dict(labels)
        self._concurrency = concurrency
        self._running = running
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False
        # Set by a warm shutdown: the host takes no new work, so it is offline while it drains,
        # yet its running count stays fresh.
        self._stopping = False

    def beat(self, *, stopped: bool = False) -> bool:
        """Write the entry as of now; False when Redis did not take it."""
        entry = entry_for(
            self.hostname,
            queues=self._queues,
            labels=self._labels,
            concurrency=self._concurrency,
            running=self._running(),
            stopped=stopped or self._stopping,
        )
        try:
            self._registry.write(self._client, entry)
        except redis.RedisError as e:
            if not self._failing:  # once per outage, not every beat
                log.warning("host registry: cannot refresh %s: %s", self.hostname, e)
            self._failing = True
            return False
        if self._failing:
            log.info("host registry: %s refreshed again", self.hostname)
        self._failing = False
        return True

    def start(self) -> None:
        """Registered before this returns (a worker is listed once it says it is ready), then
        refreshed by a daemon thread."""
        self.beat()
        self._thread = threading.Thread(target=self._loop, name="cloudops-presence", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.beat()

    def stopping(self) -> None:
        """A warm shutdown began: offline from now on; the beats go on until `stop()`."""
        self._stopping = True
        self.beat()

    def stop(self) -> None:
        """A clean stop: no more beats, and the entry says offline now (not 10 s later)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self._interval_s + 5)
        self.beat(stopped=True)
