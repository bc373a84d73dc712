"""While a command runs: renew its lease, poll its cancel mark, notice a dead parent worker.

The cancel mark makes a cancel win even when Celery's revoke broadcast was missed (it is
pub/sub: a worker that was restarting never hears it). The lease lets any other process
declare this execution lost if this host disappears. A pool process whose worker main process
died (SIGKILL, OOM) is re-parented: it then kills the command's tree itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator

from worker.executor import Executor, StopReason
from worker.proctree import parent_died
from worker.runtime import Runtime

log = logging.getLogger(__name__)


class Watchdog:
    def __init__(self, rt: Runtime, execution_id: str, worker: str, executor: Executor) -> None:
        self._rt = rt
        self._execution_id = execution_id
        self._worker = worker
        self._executor = executor
        self._stop = threading.Event()
        self._parent = os.getppid()
        self._thread = threading.Thread(target=self._run, name="cloudops-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        s = self._rt.settings
        next_beat = 0.0
        stopping = False
        # The lease is renewed until the run is over, not only until a stop is requested: a
        # cancelled command gets up to kill_grace_s before SIGKILL, and a reaper must not
        # declare a run lost while it is still ending.
        while not self._stop.wait(s.cancel_poll_interval_s):
            if not stopping and parent_died(self._parent, wait_s=0.0):
                log.error("worker process gone; stopping execution %s", self._execution_id)
                self._executor.request_stop(StopReason.WORKER_LOST)
                stopping = True
            try:
                if not stopping and self._rt.records.cancel_requested(self._execution_id):
                    self._executor.request_stop(StopReason.CANCELLED)
                    stopping = True
                now = time.monotonic()
                if now >= next_beat:
                    self._rt.records.renew_lease(self._execution_id, self._worker)
                    next_beat = now + s.heartbeat_interval_s
            except Exception as e:  # Redis unreachable: the command goes on
                log.debug("watchdog of %s: %s", self._execution_id, e)


@contextlib.contextmanager
def lease_kept(rt: Runtime, execution_id: str, worker: str) -> Iterator[None]:
    """Renew the lease while the block runs: after the command ended, publishing a backlog of
    events can outlast the lease under load, and a reaper must not declare a live run lost."""
    with renewed(
        lambda: rt.records.renew_lease(execution_id, worker), rt.settings.heartbeat_interval_s
    ):
        yield


@contextlib.contextmanager
def renewed(renew: Callable[[], None], interval_s: float, *, now: bool = True) -> Iterator[None]:
    """Call `renew` now (unless not `now`: the caller just did) and every `interval_s` while
    the block runs (a lease kept fresh); a failed renewal is tried again at the next beat."""
    stop = threading.Event()

    def loop() -> None:
        if not now and stop.wait(interval_s):
            return
        while True:
            with contextlib.suppress(Exception):
                renew()
            if stop.wait(interval_s):
                return

    thread = threading.Thread(target=loop, name="cloudops-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2)
