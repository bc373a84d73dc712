"""Celery tasks. Names are stable and readable in Flower: `cloudops.<what>`."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

from billiard.util import set_pdeathsig
from celery.signals import worker_process_init

from worker.app import TASK_RUN_COMMAND, TASK_RUN_STEP, app, current_settings
from worker.finish import StepSender, celery_step_sender
from worker.playbook import run_playbook_step
from worker.runner import run_queued_command
from worker.runtime import get_runtime


def step_sender() -> StepSender:
    """Sends playbook steps through this worker's app (a finishing run starts waiting ones)."""
    return celery_step_sender(app, current_settings().default_queue)


@contextlib.contextmanager
def leaving_if_orphaned() -> Iterator[None]:
    """A pool process whose worker died ends once its task has reported: nothing else would
    stop it (it would block forever on the dead worker's task pipe)."""
    parent = os.getppid()
    try:
        yield
    finally:
        if os.getppid() != parent:
            os._exit(0)


@app.task(name=TASK_RUN_COMMAND, bind=True)  # type: ignore[untyped-decorator]
def run_command_task(self: Any, execution_id: str) -> str:
    rt = get_runtime(current_settings())
    with leaving_if_orphaned():
        return run_queued_command(
            rt,
            execution_id,
            worker=str(self.request.hostname),
            task_id=str(self.request.id),
            send=step_sender(),
        )


@app.task(name=TASK_RUN_STEP, bind=True)  # type: ignore[untyped-decorator]
def run_playbook_step_task(self: Any, execution_id: str, index: int) -> str:
    """Step `index` (0-based) of a playbook run; queues the next step when it ends."""
    rt = get_runtime(current_settings())
    with leaving_if_orphaned():
        return run_playbook_step(
            rt,
            execution_id,
            index,
            worker=str(self.request.hostname),
            task_id=str(self.request.id),
            send=step_sender(),
        )


@worker_process_init.connect(weak=False)  # type: ignore[untyped-decorator]
def _survive_parent_death(**_: Any) -> None:
    """Celery makes the kernel SIGKILL pool processes when the worker's main process dies;
    a running command's tree would then be orphaned with nobody to report it. SIGTERM instead
    lets a running task kill its command's session and report the worker as lost (an idle
    pool process just exits: SIGTERM is at its default there)."""
    set_pdeathsig(signal.SIGTERM)
