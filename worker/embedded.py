"""Embedded mode's task queue: the fleet's task bodies, run in threads of this process.

With no Redis configured, the composition root (cli/) gives the worker side an in-process
Redis and this queue: submitting, claiming, publishing, `max_concurrent` slots, cancelling and
reading all go exactly the fleet's way; only the hop through a broker to a pool process is a
thread start instead.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence

from worker.executor import StopReason
from worker.notify import notify_in_thread
from worker.playbook.fanout import run_host_step
from worker.playbook.run import run_playbook_step
from worker.runner import TaskStop, run_queued_command
from worker.runtime import Runtime
from worker.taskqueue import Route, Secrets, host_task_id, step_task_id

log = logging.getLogger(__name__)


def embedded_worker_name() -> str:
    return f"embedded@{socket.gethostname()}"


class ThreadQueue:
    """A TaskQueue whose tasks run in daemon threads; `revoke(terminate=True)` stops a running
    task the way SIGTERM stops it in a pool process."""

    def __init__(self, rt: Runtime, worker: str | None = None) -> None:
        self.rt = rt
        self.worker = worker or embedded_worker_name()
        self._lock = threading.Lock()
        self._stops: dict[str, TaskStop] = {}
        self._threads: set[threading.Thread] = set()
        self._first_rounds: dict[str, threading.Event] = {}

    def send_command(self, execution_id: str, queue: str | None) -> None:
        self._start(execution_id, functools.partial(run_queued_command, self.rt, execution_id))

    def send_step(
        self, execution_id: str, index: int, route: Route, *, secrets: Secrets = None
    ) -> None:
        task_id = step_task_id(execution_id, index)
        run = functools.partial(run_playbook_step, self.rt, execution_id, index, secrets=secrets)
        self._start(task_id, run)

    def send_notify(self, execution_id: str) -> None:
        # Not one of the tasks `join` waits for: a webhook that is down must not hold up the
        # end of a `cloudops run` for the ten minutes of its retries (see `wait_notified`).
        done = threading.Event()

        def first_round() -> None:
            done.set()
            with self._lock:
                self._first_rounds.pop(execution_id, None)

        with self._lock:
            self._first_rounds[execution_id] = done
        notify_in_thread(self.rt, execution_id, first_round)

    def wait_notified(self, execution_id: str, timeout_s: float) -> bool:
        """Wait, at most `timeout_s`, for the tasks started so far (the one that ends the
        execution queues its notification) and for the notification's first round; False if
        the timeout came first. Retries are not waited for."""
        deadline = time.monotonic() + timeout_s
        if not self.join(timeout_s):
            return False
        with self._lock:
            done = self._first_rounds.get(execution_id)
        return done is None or done.wait(max(0.0, deadline - time.monotonic()))

    def send_hosts(
        self, execution_id: str, index: int, hosts: Sequence[str], *, secrets: Secrets = None
    ) -> dict[str, str]:
        # One host here: embedded mode's own worker is the only one the registry lists.
        for host in hosts:
            task_id = host_task_id(execution_id, index, host)
            run = functools.partial(
                run_host_step, self.rt, execution_id, index, host, secrets=secrets
            )
            self._start(task_id, run)
        return {}

    def revoke(self, task_id: str, *, terminate: bool) -> None:
        # A task not yet running needs nothing: its claim refuses a cancelled execution.
        with self._lock:
            stop = self._stops.get(task_id)
        if stop is not None and terminate:
            stop.request_stop(StopReason.CANCELLED)

    def running(self) -> int:
        """Tasks running now (the host registry's `running`)."""
        with self._lock:
            return len(self._threads)

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait for every task started so far; False if the timeout came first."""
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(timeout_s)
        return not any(t.is_alive() for t in threads)

    def _start(self, task_id: str, body: Callable[..., str]) -> None:
        """Run `body(worker=, task_id=, tasks=, stop=)`, a task body, in a thread."""
        stop = TaskStop()

        def run() -> None:
            try:
                body(worker=self.worker, task_id=task_id, tasks=self, stop=stop)
            except Exception:
                log.exception("task %s failed", task_id)
            finally:
                with self._lock:
                    self._stops.pop(task_id, None)
                    self._threads.discard(threading.current_thread())

        thread = threading.Thread(target=run, name=f"cloudops-{task_id}", daemon=True)
        with self._lock:
            self._stops[task_id] = stop
            self._threads.add(thread)
        thread.start()
