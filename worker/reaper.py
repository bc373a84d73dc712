"""Declare lost executions failed: their worker died and nobody else will end them.

Runs in every worker's main process, and in the relay (cli/ starts it there), so that an
execution ends even when no worker is left. An execution of this host whose pool process is
gone (OOM, SIGKILL) is ended at once and its command's session killed; any execution whose
lease expired (its host stopped renewing it) is ended by whichever process notices first. The
publish rules guarantee a single `execution_complete` even if two reapers race.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Mapping

from events.lifecycle import Reporter, duration_ms
from events.models import utc_now
from events.vocabulary import CommandType, RecordField, Status, StepStatus, step_field
from worker.finish import finish
from worker.playbook.fanout import reap_hosts
from worker.proctree import alive, signal_session
from worker.runtime import Runtime
from worker.taskqueue import TaskQueue

log = logging.getLogger(__name__)

REAP_INTERVAL_S = 2.0


F = RecordField


def reap_once(
    rt: Runtime, tasks: TaskQueue, hostname: str | None = None, *, leases_until: float = math.inf
) -> list[str]:
    """One scan of the running set; returns the executions declared lost. `tasks` starts a
    playbook run that waited for the slot a lost run held; `hostname` is this worker's (None
    in the relay, where no execution is local and no process is ever signalled). After the
    monotonic time `leases_until` an expired lease is not trusted (see start_reaper): only
    runs whose local pool process is gone are lost."""
    lost: list[str] = []
    for execution_id in rt.records.running_ids():
        raw = rt.records.raw(execution_id)
        if raw.get(F.COMPLETE_ID) or raw.get(F.STATUS) != Status.RUNNING:
            rt.records.release(execution_id)
            continue
        if raw.get(F.FAN_OUT):
            # A fan-out step: each host is judged on its own, the others go on.
            reap_hosts(rt, execution_id, raw, tasks, hostname)
            continue
        worker = raw.get(F.WORKER)
        local = hostname is not None and worker == hostname
        pool_pid = int(raw.get(F.WORKER_PID) or 0)
        pool_dead = local and pool_pid > 0 and not alive(pool_pid)
        if not pool_dead and not _lease_lapsed(rt, execution_id, leases_until):
            continue
        if not rt.records.mark_lost(execution_id, pool_pid if pool_dead else None):
            continue  # it moved on meanwhile: ended, or a playbook handed off to its next step
        if local and raw.get(F.PID):
            # The command's session outlived the process that ran it: kill it here.
            signal_session(int(raw[F.PID]), signal.SIGKILL)
        why = "its pool process died" if pool_dead else "no heartbeat from its host"
        error = f"worker lost: {worker or 'unknown worker'} stopped ({why})"
        reporter = Reporter(rt.publisher, execution_id, worker=worker)
        _fail_running_step(reporter, raw, error)
        reporter.complete(Status.FAILED, raw.get(F.STARTED_AT) or utc_now(), error=error, wait=True)
        finish(rt, execution_id, tasks)
        lost.append(execution_id)
        log.warning("execution %s: %s", execution_id, error)
    return lost


def _lease_lapsed(rt: Runtime, execution_id: str, until: float) -> bool:
    """Whether the run's lease is gone, as seen by a scan that did not stall before `until`
    (a stalled Redis lets leases lapse: see start_reaper)."""
    if time.monotonic() >= until:
        return False
    return not rt.records.lease_alive(execution_id) and time.monotonic() < until


def _fail_running_step(reporter: Reporter, raw: Mapping[str, str], error: str) -> None:
    """A playbook's step that was running ends too: its playbook_step_complete says why."""
    if raw.get(F.COMMAND_TYPE) != CommandType.PLAYBOOK or not raw.get(F.STEP_INDEX):
        return
    n = int(raw[F.STEP_INDEX]) + 1
    state = json.loads(raw.get(step_field(n)) or "{}")
    if state.get("status") != StepStatus.RUNNING:
        return  # it ended (or never started) before its worker did
    steps = json.loads(raw.get(F.SPEC) or "{}").get("steps") or []
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


def start_reaper(rt: Runtime, tasks: TaskQueue, hostname: str | None) -> threading.Event:
    """Run reap_once every REAP_INTERVAL_S in a daemon thread; set the event to stop it.

    An expired lease means a dead host only if Redis answered all along: while it was down or
    hung (or a new master took over) no host could renew, so right after it comes back every
    lease may have lapsed over live runs. A reaper therefore trusts expiry only after a whole
    lease of scans that neither failed nor stalled (a stall of half a lease could have let a
    lease renewed each heartbeat lapse), and within one scan only until it stalls."""
    stop = threading.Event()
    stall_s = rt.settings.lease_ttl_s / 2

    def loop() -> None:
        doubted_at = time.monotonic()  # at start, too: no lease has been seen renewed yet
        while not stop.wait(REAP_INTERVAL_S):
            began = time.monotonic()
            trusted = began - doubted_at >= rt.settings.lease_ttl_s
            try:
                reap_once(rt, tasks, hostname, leases_until=began + stall_s if trusted else 0.0)
            except Exception as e:  # Redis unreachable: try again later
                log.debug("reaper: %s", e)
                doubted_at = time.monotonic()
            else:
                if time.monotonic() - began > stall_s:
                    doubted_at = time.monotonic()

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
            pool_pid = int(raw.get(F.WORKER_PID) or 0)
            if raw.get(F.WORKER) == hostname and pool_pid and alive(pool_pid):
                log.warning("shutdown grace over: stopping execution %s", execution_id)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pool_pid, signal.SIGTERM)

    threading.Thread(target=later, name="cloudops-shutdown", daemon=True).start()
