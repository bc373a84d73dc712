"""Declare lost executions failed: their worker died and nobody else will end them.

Runs in every worker's main process. An execution of this host whose pool process is gone
(OOM, SIGKILL) is ended at once and its command's session killed; any execution whose lease
expired (its host stopped renewing it) is ended by whichever worker notices first. The publish
script guarantees a single `execution_complete` even if two reapers race.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping

from events.lifecycle import Reporter, duration_ms
from events.models import utc_now
from worker.finish import StepSender, finish
from worker.proctree import alive, signal_session
from worker.runtime import Runtime

log = logging.getLogger(__name__)

REAP_INTERVAL_S = 2.0


def reap_once(
    rt: Runtime, hostname: str | None = None, send: StepSender | None = None
) -> list[str]:
    """One scan of the running set; returns the executions declared lost. `send` starts a
    playbook run that waited for the slot a lost run held (default: this worker's app)."""
    lost: list[str] = []
    for execution_id in rt.records.running_ids():
        raw = rt.records.raw(execution_id)
        if raw.get("completeId") or raw.get("status") != "running":
            rt.records.release(execution_id)
            continue
        worker = raw.get("worker")
        local = hostname is not None and worker == hostname
        pool_pid = int(raw.get("workerPid") or 0)
        pool_dead = local and pool_pid > 0 and not alive(pool_pid)
        if not pool_dead and rt.records.lease_alive(execution_id):
            continue
        if not rt.records.mark_lost(execution_id, pool_pid if pool_dead else None):
            continue  # it moved on meanwhile: ended, or a playbook handed off to its next step
        if local and raw.get("pid"):
            # The command's session outlived the process that ran it: kill it here.
            signal_session(int(raw["pid"]), signal.SIGKILL)
        why = "its pool process died" if pool_dead else "no heartbeat from its host"
        error = f"worker lost: {worker or 'unknown worker'} stopped ({why})"
        reporter = Reporter(rt.publisher, execution_id, worker=worker)
        _fail_running_step(reporter, raw, error)
        reporter.complete("failed", raw.get("startedAt") or utc_now(), error=error, wait=True)
        finish(rt, execution_id, send or _worker_sender(rt))
        lost.append(execution_id)
        log.warning("execution %s: %s", execution_id, error)
    return lost


def _fail_running_step(reporter: Reporter, raw: Mapping[str, str], error: str) -> None:
    """A playbook's step that was running ends too: its playbook_step_complete says why."""
    if raw.get("commandType") != "playbook" or not raw.get("stepIndex"):
        return
    n = int(raw["stepIndex"]) + 1
    state = json.loads(raw.get(f"step:{n}") or "{}")
    if state.get("status") != "running":
        return  # it ended (or never started) before its worker did
    steps = json.loads(raw.get("spec") or "{}").get("steps") or []
    if len(steps) < n:
        return
    step = steps[n - 1]
    started_at = state.get("startedAt")
    reporter.step_complete(
        step_id=step["step_id"],
        step_number=n,
        step_name=step["step_name"],
        success=False,
        exit_code=None,
        duration_ms=duration_ms(started_at, utc_now()) if started_at else 0,
        error=error,
        continue_on_error=bool(step.get("continue_on_error")),
        attempts=int(state.get("attempts") or 1),
        started_at=started_at,
    )


def _worker_sender(rt: Runtime) -> StepSender:
    # The reaper runs in a worker's main process, whose app is configured.
    from worker.app import app
    from worker.finish import celery_step_sender

    return celery_step_sender(app, rt.settings.default_queue)


def start_reaper(rt: Runtime, hostname: str | None) -> threading.Event:
    """Run reap_once every REAP_INTERVAL_S in a daemon thread; set the event to stop it."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(REAP_INTERVAL_S):
            with contextlib.suppress(Exception):
                reap_once(rt, hostname)

    threading.Thread(target=loop, name="cloudops-reaper", daemon=True).start()
    return stop


def stop_after_grace(rt: Runtime, hostname: str | None, grace_s: float) -> None:
    """Warm shutdown: running commands get `grace_s` to finish; then each pool process still
    running one gets SIGTERM, which its task turns into a clean stop (tree killed, reported
    `failed: worker shut down`), so Celery's warm shutdown can complete."""

    def later() -> None:
        time.sleep(grace_s)
        for execution_id in rt.records.running_ids():
            raw = rt.records.raw(execution_id)
            pool_pid = int(raw.get("workerPid") or 0)
            if raw.get("worker") == hostname and pool_pid and alive(pool_pid):
                log.warning("shutdown grace over: stopping execution %s", execution_id)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pool_pid, signal.SIGTERM)

    threading.Thread(target=later, name="cloudops-shutdown", daemon=True).start()
