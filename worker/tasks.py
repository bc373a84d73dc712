"""Celery tasks. Names are stable and readable in Flower: `cloudops.<what>`."""

from __future__ import annotations

from typing import Any

from worker.app import TASK_RUN_COMMAND, app, current_settings
from worker.runner import run_queued_command
from worker.runtime import get_runtime


@app.task(name=TASK_RUN_COMMAND, bind=True)  # type: ignore[untyped-decorator]
def run_command_task(self: Any, execution_id: str) -> str:
    rt = get_runtime(current_settings())
    return run_queued_command(
        rt, execution_id, worker=str(self.request.hostname), task_id=str(self.request.id)
    )
