"""Fan-out steps (CONTRACT §7): one step run once on every matching online host.

start_fan_out  the step's task (any worker of its queue): resolve the hosts from the
               registry and freeze them into playbook_step_start, end the offline named
               ones `failed` ("host offline"), and send the first `parallel` hosts' runs,
               each a task on that host's own worker-direct queue. It does not wait.
run_host_step  one host's run, on that host: claim it once, run the command and its
               retries under its own process tree (the watchdog, the lease and the guard
               of any command), publish playbook_host_start, output, playbook_host_complete.
_follow        after any host's end: events/lua/fan_out.lua took the next hosts to start
               and the ones to skip; the caller that ended the step's last host publishes
               the one playbook_step_complete and goes on as a single step does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from events.fan_out import Next
from events.lifecycle import Reporter, duration_ms
from events.models import utc_now
from events.records import HostRun
from events.vocabulary import HostStatus, Outcome, RecordField, Status, step_field
from worker.executor import StopReason
from worker.playbook.ending import go_on
from worker.playbook.render import RenderedStep
from worker.playbook.secrets import MissingSecretError, secrets_of, step_of, with_secrets
from worker.playbook.steps import (
    StepOutcome,
    Supervision,
    report_step_complete,
    report_step_start,
    run_attempts,
)
from worker.playbook.targets import match_targets, online_hosts
from worker.proctree import CommandTree, alive, signal_session
from worker.runner import TaskStop, cancel_confirmed_in, sigterm_stops, watched
from worker.runtime import Runtime
from worker.taskqueue import TaskQueue
from worker.watchdog import renewed

log = logging.getLogger(__name__)
F = RecordField

HOST_OFFLINE_ERROR = "host offline"
# How long one of a step's first hosts waits for the others to be ready (FanOutStore.gather):
# what a busy or unreachable host can cost the others, at most.
GATHER_S = 0.5
NO_HOST_ERROR = "no online host matches targets"


@dataclass(frozen=True)
class _Step:
    """What every caller of a fan-out step needs: where it is and how it goes on."""

    rt: Runtime
    execution_id: str
    step: RenderedStep
    spec: Mapping[str, Any]
    tasks: TaskQueue

    @property
    def number(self) -> int:
        return self.step.step_number

    def end_host(self, reporter: Reporter, run: HostRun, error: str | None, started: bool) -> Next:
        """Publish the host's playbook_host_complete, confirmed before its end is counted (the
        step's completion, maybe published elsewhere next, must follow it)."""
        reporter.host_complete(
            step_id=self.step.step_id,
            step_number=self.number,
            host=run.host,
            status=run.status,
            exit_code=run.exit_code,
            duration_ms=run.duration_ms or 0,
            error=error,
            wait=True,
        )
        self.rt.publisher.flush(60)
        return self.rt.fan_out.end(self.execution_id, self.number, run, started=started)


def start_fan_out(
    rt: Runtime,
    reporter: Reporter,
    execution_id: str,
    step: RenderedStep,
    spec: Mapping[str, Any],
    tasks: TaskQueue,
    worker: str,
    started_at: str,
) -> str:
    """The fan-out step's own task: resolve, freeze and start its hosts; its status so far."""
    assert step.targets is not None
    up, offline = match_targets(online_hosts(rt), step.targets)
    report_step_start(reporter, rt.settings, step, [*up, *offline])
    ctx = _Step(rt, execution_id, step, spec, tasks)
    if not up and not offline:
        outcome = StepOutcome(Status.FAILED, None, NO_HOST_ERROR, 0, 1)
        _publish_step_complete(reporter, step, outcome, [])
        return go_on(rt, reporter, execution_id, step, outcome, spec, tasks, worker, started_at)
    for host in offline:
        reporter.host_complete(
            step_id=step.step_id,
            step_number=step.step_number,
            host=host,
            status=HostStatus.FAILED,
            exit_code=None,
            duration_ms=0,
            error=HOST_OFFLINE_ERROR,
        )
    rt.publisher.flush(60)
    failed = [HostRun(host=h, status=HostStatus.FAILED, duration_ms=0) for h in offline]
    nxt = rt.fan_out.init(
        execution_id,
        step.step_number,
        up,
        parallel=step.parallel,
        max_failures=step.max_failures,
        offline=failed,
    )
    return _follow(ctx, reporter, nxt, worker) or Status.RUNNING


def run_host_step(
    rt: Runtime,
    execution_id: str,
    index: int,
    host: str,
    *,
    worker: str,
    task_id: str,
    tasks: TaskQueue,
    stop: TaskStop | None = None,
    secrets: Mapping[str, str] | None = None,
) -> str:
    """One host's run of step `index`: the body of its task, on that host (`secrets`: the
    run's secret params' values, from the task's arguments)."""
    number = index + 1
    claim = rt.fan_out.claim(execution_id, number, host, task_id)
    if claim.outcome == Outcome.ENDED:
        log.info("host %s of step %d of %s not run: ended", host, number, execution_id)
        return claim.outcome
    spec = with_secrets(json.loads(claim.spec or "{}"), secrets)
    missing: str | None = None
    try:
        step = step_of(spec, index)
    except MissingSecretError as e:  # sent by a reaper, which holds no secrets
        step, missing = RenderedStep.from_dict(spec["steps"][index]), str(e)
    ctx = _Step(rt, execution_id, step, spec, tasks)
    reporter = Reporter(rt.publisher, execution_id, worker=worker)
    reporter.host = host
    stop = stop or TaskStop()
    try:
        if claim.outcome == Outcome.CANCEL:
            run = HostRun(host=host, status=HostStatus.CANCELLED, duration_ms=0)
            nxt = ctx.end_host(reporter, run, "cancelled", started=True)
        elif missing is not None:
            run = HostRun(host=host, status=HostStatus.FAILED, duration_ms=0)
            nxt = ctx.end_host(reporter, run, missing, started=True)
        else:
            with sigterm_stops(stop):
                nxt = _run_host(ctx, reporter, host, worker, stop, claim.wave)
        return _follow(ctx, reporter, nxt, worker) or Status.COMPLETED
    finally:
        with contextlib.suppress(Exception):
            rt.publisher.flush(60)
        rt.publisher.forget(execution_id)


def _run_host(
    ctx: _Step, reporter: Reporter, host: str, worker: str, stop: TaskStop, wave: int
) -> Next:
    """`wave`: the size of the step's first wave when this host is one of it (Claim)."""
    rt, execution_id, step = ctx.rt, ctx.execution_id, ctx.step

    def renew() -> None:
        rt.fan_out.renew_host_lease(execution_id, ctx.number, host)

    watch = watched(rt, execution_id, worker, stop)

    def on_start(tree: CommandTree) -> None:
        with contextlib.suppress(Exception):
            rt.fan_out.record_pids(execution_id, ctx.number, host, tree.pid, os.getpid())

    # The claim renewed the lease a moment ago: the first renewal waits a beat.
    with renewed(renew, rt.settings.heartbeat_interval_s, now=False):

        def gather() -> None:
            # The step's first hosts start together (FanOutStore.gather), each with all but
            # its command's own start done: the Python of the run, the pipes and the guard's
            # fork no longer spread the starts over two shared cores.
            if wave > 1:
                with contextlib.suppress(Exception):
                    rt.fan_out.gather(execution_id, ctx.number, wave, GATHER_S)

        reporter.host_start(step_id=step.step_id, step_number=ctx.number, attempt=1)
        supervision = Supervision(
            watch, lambda: cancel_confirmed_in(rt, execution_id), on_start, before_spawn=gather
        )
        outcome = run_attempts(reporter, rt.settings, step, supervision)
        status = HostStatus(outcome.status.value)
        if outcome.stop_reason is StopReason.WORKER_LOST:
            status = HostStatus.LOST
        run = HostRun(
            host=host, status=status, exit_code=outcome.exit_code, duration_ms=outcome.duration_ms
        )
        return ctx.end_host(reporter, run, outcome.error, started=True)


def _follow(ctx: _Step, reporter: Reporter, nxt: Next, worker: str) -> str | None:
    """Skip the hosts `max_failures` handed back, start the ones `parallel` allows; when this
    caller ended the step's last host, end the step and go on (the run's status then)."""
    pending = [nxt]
    last = False
    while pending:
        n = pending.pop()
        last = last or n.last
        for host in n.skip:
            skipped = HostRun(host=host, status=HostStatus.SKIPPED, duration_ms=0)
            error = f"skipped: more than {ctx.step.max_failures} hosts failed"
            pending.append(ctx.end_host(reporter, skipped, error, started=False))
        _send(ctx, n.start)
    if not last:
        return None
    return _complete_step(ctx, reporter, worker)


def _send(ctx: _Step, hosts: list[str]) -> None:
    """Send each host's run to that very worker, their leases renewed in one round trip and
    their tasks through one producer (twenty hosts one by one spread their starts); a host
    whose send failed ends `failed` (one the broker did get refuses its run then: its claim
    finds it ended)."""
    if not hosts:
        return
    rt = ctx.rt
    with contextlib.suppress(Exception):
        rt.fan_out.renew_host_leases(ctx.execution_id, ctx.number, hosts)
    try:
        failed = ctx.tasks.send_hosts(
            ctx.execution_id, ctx.number - 1, hosts, secrets=secrets_of(ctx.spec)
        )
    except Exception as e:
        log.exception("could not send the hosts of %s", ctx.execution_id)
        failed = dict.fromkeys(hosts, str(e))
    for host, why in failed.items():
        log.error("could not send host %s of %s: %s", host, ctx.execution_id, why)
        run = HostRun(host=host, status=HostStatus.FAILED, duration_ms=0)
        reporter = Reporter(rt.publisher, ctx.execution_id)
        nxt = ctx.end_host(reporter, run, f"could not queue: {why}", started=True)
        _follow(ctx, reporter, nxt, "")


def _complete_step(ctx: _Step, reporter: Reporter, worker: str) -> str:
    """Every host ended: the step's one playbook_step_complete, then on as a single step."""
    rt, execution_id = ctx.rt, ctx.execution_id
    runs = sorted(rt.fan_out.results(execution_id, ctx.number).values(), key=lambda r: r.host)
    state = json.loads(rt.records.field(execution_id, step_field(ctx.number)) or "{}")
    started = state.get("startedAt") or utc_now()
    outcome = _step_outcome(runs, duration_ms(started, utc_now()), rt, execution_id)
    _publish_step_complete(reporter, ctx.step, outcome, runs, started)
    started_at = rt.records.field(execution_id, F.STARTED_AT) or started
    return go_on(
        rt, reporter, execution_id, ctx.step, outcome, ctx.spec, ctx.tasks, worker, started_at
    )


def _step_outcome(runs: list[HostRun], ms: int, rt: Runtime, execution_id: str) -> StepOutcome:
    """Succeeded when every host did; cancelled when a host was and the user asked for it."""
    bad = [r for r in runs if r.status is not HostStatus.COMPLETED]
    if not bad:
        return StepOutcome(Status.COMPLETED, 0, None, ms, 1)
    cancelled = any(r.status is HostStatus.CANCELLED for r in bad)
    if cancelled and cancel_confirmed_in(rt, execution_id):
        return StepOutcome(Status.CANCELLED, None, "cancelled", ms, 1)
    error = f"{len(bad)} of {len(runs)} hosts did not succeed: " + ", ".join(
        f"{r.host} {r.status.value}" for r in bad
    )
    exit_code = next((r.exit_code for r in bad if r.exit_code), None)
    return StepOutcome(Status.FAILED, exit_code, error, ms, 1)


def _publish_step_complete(
    reporter: Reporter,
    step: RenderedStep,
    outcome: StepOutcome,
    runs: list[HostRun],
    started_at: str | None = None,
) -> None:
    """The step's one completion; not a host's event (its reporter may be a host's)."""
    saved, reporter.host = reporter.host, None
    report_step_complete(reporter, step, outcome, started_at=started_at, hosts=runs)
    reporter.host = saved


def reap_hosts(
    rt: Runtime, execution_id: str, raw: Mapping[str, str], tasks: TaskQueue, hostname: str | None
) -> list[str]:
    """The reaper's rules (worker.reaper), per host of the fan-out step running now: a host
    whose run's pool process died here, or whose run's lease expired (once claimed; before,
    only while its worker is offline too: a busy worker takes it later), ends `lost`, and the
    others go on. The hosts declared lost."""
    number = int(raw[F.FAN_OUT])
    spec: dict[str, Any] = json.loads(raw.get(F.SPEC) or "{}")
    ctx = _Step(rt, execution_id, RenderedStep.from_dict(spec["steps"][number - 1]), spec, tasks)
    online = {h["hostname"] for h in online_hosts(rt) if h["online"]}
    lost: list[str] = []
    for host in rt.fan_out.started_hosts(execution_id, number):
        pid, pool_pid = rt.fan_out.pids(execution_id, number, host)
        pool_dead = hostname == host and pool_pid > 0 and not alive(pool_pid)
        waiting = not rt.fan_out.claimed(execution_id, number, host) and host in online
        if not pool_dead and (waiting or rt.fan_out.host_lease_alive(execution_id, number, host)):
            continue
        if not rt.fan_out.take_loss(execution_id, number, host):
            continue  # another reaper ends it
        if pool_dead and pid:
            signal_session(pid, signal.SIGKILL)  # the tree outlived the process that ran it
        why = "its pool process died" if pool_dead else "no heartbeat from its host"
        reporter = Reporter(rt.publisher, execution_id, worker=host)
        run = HostRun(host=host, status=HostStatus.LOST, duration_ms=0)
        nxt = ctx.end_host(reporter, run, f"worker lost: {host} stopped ({why})", started=True)
        _follow(ctx, reporter, nxt, host)
        lost.append(host)
    return lost
