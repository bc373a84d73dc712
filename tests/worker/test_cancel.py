"""Timeouts, cancellation through revocation, missed revokes and lost workers, on real workers.

"No process left" is checked by scanning /proc for a marker in the command lines, never by
trusting a PID file.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from events.models import ExecutionOptions
from tests.conftest import StartWorker
from tests.helpers import live_pids_with, output_of, payloads, wait_task_disposed, wait_until
from tests.worker.conftest import CeleryDispatcher, Collect
from tests.worker.trees import assert_tree_dead, new_marker, tree_script, wait_tree_up

pytestmark = pytest.mark.integration


def test_timeout_kills_the_whole_tree(
    start_worker: StartWorker, dispatcher: CeleryDispatcher, collect: Collect
) -> None:
    start_worker()
    marker = new_marker()
    ex = dispatcher.submit_command(
        tree_script(marker), "script", options=ExecutionOptions(timeout=2)
    )
    events = collect(ex, timeout_s=30)
    names = [e.event for e in events]
    assert names[0] == "execution_started" and names[-1] == "execution_complete"
    assert set(names[1:-1]) == {"execution_output"}
    assert output_of(events, "stdout") == "started\n"
    done = payloads(events)[-1]
    assert done["status"] == "timeout" and done["error"] == "timed out after 2 s"
    # SIGTERM at 2 s, SIGKILL for the trapper after the 2 s grace.
    assert 2000 <= done["durationMs"] < 2000 + 2000 + 1500
    assert_tree_dead(marker)


@pytest.mark.brokers
def test_cancel_running_kills_the_whole_tree_then_reports(
    start_worker: StartWorker, dispatcher: CeleryDispatcher, collect: Collect
) -> None:
    worker = start_worker()
    marker = new_marker()
    ex = dispatcher.submit_command(tree_script(marker), "script")
    wait_tree_up(marker)
    t0 = time.monotonic()
    dispatcher.cancel(ex)
    events = collect(ex, timeout_s=30)
    elapsed = time.monotonic() - t0
    assert [e.event for e in events][-2:] == ["execution_cancelled", "execution_complete"]
    cancelled = payloads(events, "execution_cancelled")[0]
    assert cancelled["partialOutput"].startswith("started\n")
    assert cancelled["reason"]
    done = payloads(events)[-1]
    assert done["status"] == "cancelled"
    assert_tree_dead(marker)
    # Within the grace period (2 s here) plus scheduling slack.
    assert elapsed < 2.0 + 2.0
    assert "Terminating " + ex in worker.log()  # it went through Celery's revocation
    # Cancelling an ended execution changes nothing.
    from events.errors import ExecutionEndedError

    with pytest.raises(ExecutionEndedError):
        dispatcher.cancel(ex)
    assert dispatcher.rt.records.get(ex).status == "cancelled"  # type: ignore[union-attr]


def test_cancel_mark_wins_when_the_revoke_broadcast_is_missed(
    start_worker: StartWorker, dispatcher: CeleryDispatcher, collect: Collect
) -> None:
    start_worker()
    marker = new_marker()
    ex = dispatcher.submit_command(f"sleep {marker}", "script")
    wait_until(lambda: live_pids_with(marker), 10)
    # Only the mark, no broadcast: as if the worker had been deaf to pidbox at that moment.
    assert dispatcher.rt.records.request_cancel(ex) == "running"
    events = collect(ex, timeout_s=20)
    assert payloads(events)[-1]["status"] == "cancelled"
    assert_tree_dead(marker)


@pytest.mark.brokers
def test_cancel_while_no_worker_runs_then_worker_starts(
    start_worker: StartWorker, dispatcher: CeleryDispatcher, collect: Collect, tmp_path: Path
) -> None:
    flag = tmp_path / "ran"
    ex = dispatcher.submit_command(f"touch {flag}", "script")
    dispatcher.cancel(ex)
    events = collect(ex, timeout_s=10)
    assert [e.event for e in events] == ["execution_cancelled", "execution_complete"]
    assert payloads(events)[-1]["status"] == "cancelled"
    worker = start_worker()
    # The worker receives the task and refuses it: revoked, or our claim says cancelled.
    wait_task_disposed(worker, "cloudops.run_command", ex)
    assert not flag.exists()
    assert dispatcher.rt.redis.xlen(dispatcher.rt.keys.history(ex)) == 2


@pytest.mark.brokers
def test_worker_sigkilled_mid_run_fails_as_lost_and_never_reruns(
    start_worker: StartWorker, dispatcher: CeleryDispatcher, collect: Collect, tmp_path: Path
) -> None:
    worker = start_worker(hostname="doomed@test")
    marker = new_marker()
    runs = tmp_path / "runs"
    ex = dispatcher.submit_command(f"echo run >> {runs}; sleep {marker}; echo never", "script")
    # The marker is in the shell's command line too: wait for its first line to have run, or
    # a kill before `echo` wrote would leave the file empty.
    wait_until(lambda: live_pids_with(marker) and runs.exists() and runs.read_text(), 10)
    t0 = time.monotonic()
    os.kill(worker.pid, signal.SIGKILL)  # the worker's main process, as OOM or kill -9 would
    # billiard's pool processes die with their parent, and so does the command's leader
    # (PR_SET_PDEATHSIG): nothing may keep running on a host whose worker is gone.
    wait_until(lambda: not live_pids_with(marker), 5, what="the command to die")
    # The worker comes back on the same host: its reaper ends the execution as lost...
    back = start_worker(hostname="doomed@test")
    events = collect(ex, timeout_s=20)
    done = payloads(events)[-1]
    assert done["status"] == "failed" and "worker lost" in done["error"]
    assert time.monotonic() - t0 < 15
    # ...and does not run it again.
    assert runs.read_text() == "run\n"
    assert "never" not in output_of(events)
    assert ex not in back.log()


@pytest.mark.brokers
def test_whole_worker_tree_killed_is_reaped_by_another_worker(
    start_worker: StartWorker, dispatcher: CeleryDispatcher, collect: Collect
) -> None:
    start_worker(hostname="survivor@test", queues="other")
    doomed = start_worker(hostname="gone@test")
    marker = new_marker()
    ex = dispatcher.submit_command(f"sleep {marker}", "script")
    wait_until(lambda: live_pids_with(marker), 10)
    t0 = time.monotonic()
    doomed.kill_tree()  # main and pool processes at once: the host is gone
    events = collect(ex, timeout_s=20)
    done = payloads(events)[-1]
    assert done["status"] == "failed" and "worker lost" in done["error"]
    assert time.monotonic() - t0 < 15
    # The leader had PR_SET_PDEATHSIG: it did not outlive the pool process.
    wait_until(lambda: not live_pids_with(marker), 5, what="the command to die")
