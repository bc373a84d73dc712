"""Celery tasks. Names are stable and readable in Flower: `cloudops.<what>`."""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from billiard.util import set_pdeathsig
from celery.signals import worker_process_init

from worker.app import app, current_settings
from worker.guard import SERVER
from worker.notify import attempt_store, next_delay_s, notify_round, retry_delays_s
from worker.playbook.fanout import run_host_step
from worker.playbook.run import run_playbook_step
from worker.proctree import parent_died
from worker.runner import run_queued_command
from worker.runtime import get_runtime
from worker.taskqueue import (
    TASK_NOTIFY,
    TASK_RUN_COMMAND,
    TASK_RUN_HOST,
    TASK_RUN_STEP,
    CeleryQueue,
)

log = logging.getLogger(__name__)


def task_queue() -> CeleryQueue:
    """Tasks through this worker's app (a step hands off, a finishing run starts waiting ones)."""
    return CeleryQueue(app, current_settings().default_queue)


@contextlib.contextmanager
def leaving_if_orphaned() -> Iterator[None]:
    """A pool process whose worker died ends once its task has reported: nothing else would
    stop it (it would block forever on the dead worker's task pipe)."""
    parent = os.getppid()
    try:
        yield
    finally:
        # Not only a new parent: while a SIGKILLed worker's other threads still exit, we keep
        # it as parent (a zombie leader), and billiard would then wait 30 s for it to read our
        # result (Pool._ensure_messages_consumed) before leaving.
        if parent_died(parent, wait_s=0.0):
            os._exit(0)


def run_as_task(task: Any, run: Callable[..., str], execution_id: str, *args: Any) -> str:
    """An execution's task body: `run(rt, execution_id, *args, worker=, task_id=, tasks=)`
    with this worker's runtime, leaving if the worker died meanwhile."""
    rt = get_runtime(current_settings())
    with leaving_if_orphaned():
        return run(
            rt,
            execution_id,
            *args,
            worker=str(task.request.hostname),
            task_id=str(task.request.id),
            tasks=task_queue(),
        )


@app.task(name=TASK_RUN_COMMAND, bind=True)  # type: ignore[untyped-decorator]
def run_command_task(self: Any, execution_id: str) -> str:
    return run_as_task(self, run_queued_command, execution_id)


@app.task(name=TASK_RUN_STEP, bind=True)  # type: ignore[untyped-decorator]
def run_playbook_step_task(
    self: Any, execution_id: str, index: int, secrets: dict[str, str] | None = None
) -> str:
    """Step `index` (0-based) of a playbook run; queues the next step when it ends.
    `secrets`: the run's secret params' values (worker.playbook.secrets)."""
    return run_as_task(self, partial(run_playbook_step, secrets=secrets), execution_id, index)


@app.task(name=TASK_NOTIFY, bind=True, max_retries=None)  # type: ignore[untyped-decorator]
def notify_task(self: Any, execution_id: str, pending: list[int] | None = None) -> str:
    """A delivery round of an ended execution's notifications (worker.notify); what failed is
    retried by Celery after a backoff. `pending`: the webhooks still to tell, by index (never
    their URLs: task arguments show in Flower)."""
    rt = get_runtime(current_settings())
    retries = int(self.request.retries)
    if retries == 0 and not attempt_store(rt).claim(execution_id):
        return "already notified"  # its end was finished twice (a reaper raced its worker)
    left = notify_round(rt, execution_id, pending, retries + 1)
    delay_s = next_delay_s(rt.settings.notify_backoff_s, retries, left)
    if delay_s is None:
        return "done" if not left else "gave up"
    limit = len(retry_delays_s(rt.settings.notify_backoff_s))
    raise self.retry(args=[execution_id, left], countdown=delay_s, max_retries=limit)


@app.task(name=TASK_RUN_HOST, bind=True)  # type: ignore[untyped-decorator]
def run_host_step_task(
    self: Any, execution_id: str, index: int, host: str, secrets: dict[str, str] | None = None
) -> str:
    """Host `host`'s run of fan-out step `index`, sent to this worker's own queue."""
    return run_as_task(self, partial(run_host_step, secrets=secrets), execution_id, index, host)


@worker_process_init.connect(weak=False)  # type: ignore[untyped-decorator]
def _survive_parent_death(**_: Any) -> None:
    """Celery makes the kernel SIGKILL pool processes when the worker's main process dies;
    a running command's tree would then be orphaned with nobody to report it. SIGTERM instead
    lets a running task kill its command's session and report the worker as lost (an idle
    pool process just exits: SIGTERM is at its default there). Its guard server starts now,
    so that no command waits for an interpreter's start-up. `kill -USR2 <pool pid>` prints
    every thread's stack to the worker's log: how an operator (or the fault suite) sees where
    a stuck pool process is (SIGUSR1 is billiard's soft time limit)."""
    set_pdeathsig(signal.SIGTERM)
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    settings = current_settings()
    exit_when_orphaned(os.getppid(), settings.kill_grace_s + ORPHAN_REPORT_S)
    if settings.guard:
        SERVER.prestart()


# What a running task gets, beyond the kill grace, to report its run once the worker is gone.
ORPHAN_REPORT_S = 10.0


def exit_when_orphaned(parent: int, budget_s: float) -> None:
    """The net under the parent-death SIGTERM: a pool process still alive `budget_s` after its
    worker died (stuck anywhere: in a report that cannot finish, in billiard's pipes to the
    dead parent) prints its stacks to the worker's log and exits. That is always safe: its
    command's guard kills the tree when this process goes, and a run it did not report ends
    `worker lost` when its lease expires."""

    def watch() -> None:
        while not parent_died(parent, wait_s=0.0):
            time.sleep(0.5)
        time.sleep(budget_s)
        log.error(
            "worker %d gone %.0f s ago and this pool process still runs: exiting", parent, budget_s
        )
        faulthandler.dump_traceback(all_threads=True)
        os._exit(1)

    threading.Thread(target=watch, name="cloudops-orphan", daemon=True).start()
