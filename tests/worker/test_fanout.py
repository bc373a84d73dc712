"""Fan-out steps (CONTRACT §7) on real workers: each host's run on that very worker, at once,
each under its own process tree; the events, the record and the gather of every host."""

from __future__ import annotations

import itertools
import json
import os
import signal
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from events.hosts import HostRegistry
from tests.conftest import StartWorker
from tests.helpers import CeleryDispatcher, ManagedProcess, live_pids_with, payloads, wait_until
from tests.worker.conftest import Collect
from tests.worker.trees import assert_tree_dead, new_marker, tree_script

# Each host prints its MARK and when it started and ended its run (epoch seconds).
TIMED = "echo start $MARK $(date +%s.%N); sleep {s}; echo end $MARK $(date +%s.%N)"


def playbook(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"name": "fan-out", "steps": list(steps)}


def start_fleet(
    start_worker: StartWorker, dispatcher: CeleryDispatcher, **workers: str
) -> dict[str, ManagedProcess]:
    """One worker (concurrency 1) per hostname, consuming the given queues, MARK=its name; wait
    until the registry lists every one online."""
    procs: dict[str, ManagedProcess] = {}
    for name, queues in workers.items():
        labels = ("tier=" + queues.split(",")[0], "region=eu")
        procs[name] = start_worker(
            hostname=f"{name}@t",
            queues=queues,
            concurrency=1,
            env={"MARK": name},
            labels=labels,
            wait_ready=False,
        )
    registry = HostRegistry(dispatcher.rt.keys)

    def all_online() -> bool:
        online = {h["hostname"] for h in registry.read(dispatcher.rt.redis) if h["online"]}
        return online >= {f"{n}@t" for n in workers}

    wait_until(all_online, timeout_s=60, what="every worker online")
    return procs


def runs(events: list[Any]) -> dict[str, tuple[float, float]]:
    """Each host's (start, end) from the TIMED lines of its output."""
    times: dict[str, dict[str, float]] = {}
    for p in payloads(events, "execution_output"):
        for line in p["output"].splitlines():
            what, mark, at = line.split()
            assert p["host"] == f"{mark}@t", p  # the output names the host that wrote it
            times.setdefault(mark, {})[what] = float(at)
    return {m: (t["start"], t["end"]) for m, t in times.items()}


def check_order(events: list[Any]) -> None:
    """Ids 1, 2, 3, ...; per host start, output, complete, inside the step; one complete."""
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    names = [e.event for e in events]
    assert names.count("execution_complete") == 1 and names[-1] == "execution_complete"
    open_step: int | None = None
    running: set[str] = set()
    for e in events:
        p = json.loads(e.data)["payload"]
        if e.event == "playbook_step_start":
            open_step = p["stepNumber"]
        elif e.event == "playbook_host_start":
            assert p["stepNumber"] == open_step and p["host"] not in running
            running.add(p["host"])
        elif e.event == "execution_output" and p.get("host"):
            assert p["host"] in running
        elif e.event == "playbook_host_complete":
            running.discard(p["host"])
        elif e.event == "playbook_step_complete":
            assert not running and p["stepNumber"] == open_step
            open_step = None


@pytest.mark.brokers
def test_a_queue_target_runs_once_on_each_of_its_hosts_at_once(
    start_worker: StartWorker, dispatcher: CeleryDispatcher, collect: Collect
) -> None:
    start_fleet(start_worker, dispatcher, web1="web", web2="web", web3="web", db1="db")
    ex = dispatcher.submit_playbook(
        playbook(
            {"id": "rotate", "command": TIMED.format(s=1), "targets": {"queue": "web"}},
            {"id": "after", "command": "echo after $MARK", "queue": "db"},
        )
    )
    events = collect(ex)
    check_order(events)
    times = runs([e for e in events if b'"rotate"' in e.data])
    assert sorted(times) == ["web1", "web2", "web3"]  # once each, never on db
    assert max(s for s, _ in times.values()) < min(e for _, e in times.values())  # overlap
    start = payloads(events, "playbook_step_start")
    assert sorted(start[0]["hosts"]) == ["web1@t", "web2@t", "web3@t"]
    assert "hosts" not in start[1]
    done = payloads(events, "playbook_step_complete")
    assert done[0]["success"] is True and done[0]["hostCounts"] == {"completed": 3}
    assert "hostCounts" not in done[1]
    hosts = payloads(events, "playbook_host_complete")
    assert sorted((h["host"], h["status"], h["exitCode"]) for h in hosts) == [
        (f"web{i}@t", "completed", 0) for i in (1, 2, 3)
    ]
    assert payloads(events)[-1]["status"] == "completed"
    rec = dispatcher.rt.records.get(ex)
    assert rec is not None and rec.steps is not None
    entry = (
        rec.steps[0].wire()
        if hasattr(rec.steps[0], "wire")
        else rec.steps[0].model_dump(mode="json", by_alias=True, exclude_none=True)
    )
    assert [h["host"] for h in entry["hosts"]] == ["web1@t", "web2@t", "web3@t"]
    assert {h["status"] for h in entry["hosts"]} == {"completed"}


def step_runs(dispatcher: CeleryDispatcher, collect: Collect, step: dict[str, Any]) -> list[Any]:
    """The events of a one-step playbook run of `step` (id `s`), checked for order."""
    events = collect(dispatcher.submit_playbook(playbook({"id": "s", **step})))
    check_order(events)
    return events


def host_ends(events: list[Any]) -> list[tuple[str, str, str | None]]:
    return [
        (p["host"], p["status"], p.get("error")) for p in payloads(events, "playbook_host_complete")
    ]


def test_parallel_max_failures_labels_offline_hosts_no_match_retries_and_timeouts(
    start_worker: StartWorker, dispatcher: CeleryDispatcher, collect: Collect, tmp_path: Path
) -> None:
    start_fleet(start_worker, dispatcher, web1="web", web2="web", web3="web", db1="db")
    run_step = partial(step_runs, dispatcher, collect)
    # parallel: 1: one host after the other, in the registry's order.
    events = run_step({"command": TIMED.format(s=0.3), "targets": {"queue": "web"}, "parallel": 1})
    spans = sorted(runs(events).values())
    assert len(spans) == 3
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # never overlap
    # max_failures: 0 and the first host fails: the others never start.
    events = run_step(
        {
            "command": '[ "$MARK" != web1 ]',
            "targets": {"queue": "web"},
            "parallel": 1,
            "max_failures": 0,
        }
    )
    assert [(h, s) for h, s, _ in host_ends(events)] == [
        ("web1@t", "failed"),
        ("web2@t", "skipped"),
        ("web3@t", "skipped"),
    ]
    assert [p["host"] for p in payloads(events, "playbook_host_start")] == ["web1@t"]
    done = payloads(events, "playbook_step_complete")[0]
    assert done["success"] is False and done["hostCounts"] == {"failed": 1, "skipped": 2}
    assert payloads(events)[-1]["status"] == "failed"
    # labels: every one must match.
    events = run_step(
        {"command": "echo $MARK", "targets": {"labels": {"tier": "db", "region": "eu"}}}
    )
    assert host_ends(events) == [("db1@t", "completed", None)]
    assert payloads(events)[-1]["status"] == "completed"
    # a named host that is offline (unknown) fails as "host offline"; the others run.
    events = run_step({"command": "echo $MARK", "targets": {"hosts": ["web2@t", "gone@t"]}})
    assert sorted(host_ends(events)) == [
        ("gone@t", "failed", "host offline"),
        ("web2@t", "completed", None),
    ]
    assert payloads(events, "playbook_step_start")[0]["hosts"] == ["web2@t", "gone@t"]
    assert payloads(events, "playbook_step_complete")[0]["hostCounts"] == {
        "completed": 1,
        "failed": 1,
    }
    # no host at all: the step fails with a clear error.
    events = run_step({"command": "echo $MARK", "targets": {"labels": {"tier": "nope"}}})
    done = payloads(events, "playbook_step_complete")[0]
    assert done["success"] is False and done["error"] == "no online host matches targets"
    assert not payloads(events, "playbook_host_start")
    assert "no online host matches targets" in payloads(events)[-1]["error"]
    # retries: only the host that failed runs again.
    flag = tmp_path / "failed-once"
    events = run_step(
        {
            "command": f"echo run $MARK; if [ $MARK = web1 ] && [ ! -e {flag} ]; then "
            f"touch {flag}; exit 3; fi",
            "targets": {"queue": "web"},
            "retries": 2,
        }
    )
    out = [(p["host"], p["output"]) for p in payloads(events, "execution_output")]
    assert sorted(o for h, o in out if o.startswith("run")) == [
        "run web1\n",
        "run web1\n",
        "run web2\n",
        "run web3\n",
    ]
    assert [h for h, o in out if "attempt 1 of 3 failed" in o] == ["web1@t"]
    assert {s for _, s, _ in host_ends(events)} == {"completed"}
    # timeouts: per host; the host that ran out of time is `timeout`, the others go on.
    events = run_step(
        {
            "command": "if [ $MARK = web3 ]; then sleep 30; fi; echo done $MARK",
            "targets": {"queue": "web"},
            "timeout": 1,
        }
    )
    assert sorted((h, s) for h, s, _ in host_ends(events)) == [
        ("web1@t", "completed"),
        ("web2@t", "completed"),
        ("web3@t", "timeout"),
    ]
    last = payloads(events, "playbook_step_complete")[0]
    assert last["hostCounts"] == {"completed": 2, "timeout": 1} and last["success"] is False


@pytest.mark.brokers
def test_cancel_mid_fan_out_kills_every_hosts_tree(
    start_worker: StartWorker, dispatcher: CeleryDispatcher, collect: Collect
) -> None:
    start_fleet(start_worker, dispatcher, web1="web", web2="web", web3="web")
    marker = new_marker()
    ex = dispatcher.submit_playbook(
        playbook(
            {"id": "s", "command": tree_script(marker), "targets": {"queue": "web"}},
            {"id": "never", "command": "echo never"},
        )
    )
    wait_until(lambda: len(live_pids_with(marker)) >= 12, 20, what="three trees")
    dispatcher.cancel(ex)
    events = collect(ex)
    check_order(events)
    assert sorted(host_ends(events)) == [(f"web{i}@t", "cancelled", "cancelled") for i in (1, 2, 3)]
    done = payloads(events, "playbook_step_complete")
    assert len(done) == 1 and done[0]["hostCounts"] == {"cancelled": 3}
    assert [e.event for e in events][-2:] == ["execution_cancelled", "execution_complete"]
    assert payloads(events)[-1]["status"] == "cancelled"
    assert_tree_dead(marker)


@pytest.mark.parametrize("what", ["main process", "process group", "pool process"])
def test_a_host_whose_worker_dies_is_lost_and_the_others_complete(
    start_worker: StartWorker,
    dispatcher: CeleryDispatcher,
    collect: Collect,
    what: str,
    tmp_path: Path,
) -> None:
    procs = start_fleet(start_worker, dispatcher, web1="web", web2="web", web3="web")
    marker, go = new_marker(), tmp_path / "go"
    # Each host says it started; web2 then sleeps, the others wait for `go`.
    command = (
        f"touch {tmp_path}/started-$MARK; if [ $MARK = web2 ]; then sleep {marker}1; "
        f"else until [ -e {go} ]; do sleep 0.05; done; fi"
    )
    ex = dispatcher.submit_playbook(
        playbook({"id": "s", "command": command, "targets": {"queue": "web"}})
    )
    wait_until(lambda: len(list(tmp_path.glob("started-*"))) == 3, 20, what="3 runs")
    victim = procs["web2"]
    if what == "main process":
        os.kill(victim.pid, signal.SIGKILL)  # its pool process is left to report
    elif what == "process group":
        os.killpg(victim.pid, signal.SIGKILL)  # nothing of it is left: the reaper decides
    else:  # the pool process running it (OOM): its worker's reaper kills the tree
        fan_out = dispatcher.rt.fan_out
        pool_pid = wait_until(lambda: fan_out.pids(ex, 1, "web2@t")[1], 10, what="its pids")
        os.kill(pool_pid, signal.SIGKILL)
    go.touch()
    events = collect(ex, timeout_s=60)
    check_order(events)
    assert sorted((h, s) for h, s, _ in host_ends(events)) == [
        ("web1@t", "completed"),
        ("web2@t", "lost"),
        ("web3@t", "completed"),
    ]
    lost = next(p for p in payloads(events, "playbook_host_complete") if p["host"] == "web2@t")
    assert "worker lost" in lost["error"]
    done = payloads(events, "playbook_step_complete")
    assert len(done) == 1 and done[0]["hostCounts"] == {"completed": 2, "lost": 1}
    assert payloads(events)[-1]["status"] == "failed"
    wait_until(lambda: not live_pids_with(marker), 10, what="web2's tree to be gone")
