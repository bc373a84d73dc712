"""Playbooks on real `cloudops worker` processes (issue 4): one Celery task per step, routed
to the step's queue; continue_on_error, retries, timeouts, cancel mid-run, lost workers, bad
playbooks refused, queued batches and `max_concurrent`.

Steps are submitted as parsed objects (the relay accepts both) or YAML text; every check waits
on events or records with a timeout, never on a fixed sleep.
"""

from __future__ import annotations

import itertools
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from events.models import parse_time
from events.records import ExecutionRecord
from events.vocabulary import Status
from tests.conftest import StartWorker
from tests.helpers import (
    CeleryDispatcher,
    assert_one_output_per_step,
    live_pids_with,
    output_of,
    payloads,
    wait_task_disposed,
    wait_until,
)
from tests.worker.conftest import Collect
from tests.worker.playbook_batch import drain_playbooks, history_problems
from tests.worker.trees import assert_tree_dead, new_marker, tree_script, wait_tree_up
from worker.playbook.errors import PlaybookError
from worker.reaper import reap_once

pytestmark = pytest.mark.integration

STEP_EVENTS = ("playbook_step_start", "playbook_step_complete")


def playbook(*steps: dict[str, Any], name: str = "test playbook", **top: Any) -> dict[str, Any]:
    return {"name": name, **top, "steps": list(steps)}


def record(dispatcher: CeleryDispatcher, ex: str) -> ExecutionRecord:
    rec = dispatcher.rt.records.get(ex)
    assert rec is not None, f"no record for {ex}"
    return rec


def step_events(events: list[Any]) -> list[tuple[str, int]]:
    return [
        (e.event, p["stepNumber"])
        for e, p in zip(events, payloads(events), strict=True)
        if e.event in STEP_EVENTS
    ]


def test_three_steps_give_the_exact_event_sequence_and_record(
    start_worker: StartWorker, dispatcher: CeleryDispatcher, collect: Collect
) -> None:
    start_worker(hostname="solo@test")
    text = (
        "name: Three steps\n"
        "options: {timeout: 60}\n"
        "steps:\n"
        "  - {id: one, name: First, command: echo one}\n"
        "  - {id: two, name: Second, command: echo two >&2}\n"
        "  - {name: Third, command: echo three}\n"
    )
    ex = dispatcher.submit_playbook(text, source="three.yml")
    events = collect(ex)
    assert_one_output_per_step(events, steps=3)
    started = payloads(events, "execution_started")[0]
    assert started["commandType"] == "playbook" and started["command"] == "Three steps"
    assert started["options"] == {"timeout": 60} and started["worker"] == "solo@test"
    starts = payloads(events, "playbook_step_start")
    assert [(p["stepId"], p["stepNumber"], p["totalSteps"], p["stepName"]) for p in starts] == [
        ("one", 1, 3, "First"),
        ("two", 2, 3, "Second"),
        ("step_3", 3, 3, "Third"),
    ]
    assert [p["command"] for p in starts] == ["echo one", "echo two >&2", "echo three"]
    assert all(p["attempt"] == 1 and p["worker"] == "solo@test" for p in starts)
    outs = payloads(events, "execution_output")
    assert [(p["stepId"], p["stream"], p["output"]) for p in outs] == [
        ("one", "stdout", "one\n"),
        ("two", "stderr", "two\n"),
        ("step_3", "stdout", "three\n"),
    ]
    completes = payloads(events, "playbook_step_complete")
    for n, p in enumerate(completes, start=1):
        assert p["stepNumber"] == n and p["success"] is True and p["exitCode"] == 0
        assert p["continueOnError"] is False and p["attempts"] == 1
        assert p["durationMs"] >= 0 and "error" not in p and p["worker"] == "solo@test"
    done = payloads(events)[-1]
    assert done["status"] == "completed" and done["exitCode"] == 0 and "error" not in done
    assert done["startedAt"] == started["startedAt"]
    rec = record(dispatcher, ex)
    assert rec.status == "completed" and rec.command_type == "playbook"
    assert rec.command == "Three steps" and rec.options == {"timeout": 60}
    assert rec.steps is not None
    assert [(s.step_id, s.step_name, s.status, s.exit_code, s.attempts, s.worker)
            for s in rec.steps] == [
        ("one", "First", "completed", 0, 1, "solo@test"),
        ("two", "Second", "completed", 0, 1, "solo@test"),
        ("step_3", "Third", "completed", 0, 1, "solo@test"),
    ]  # fmt: skip
    assert all(s.duration_ms is not None and s.started_at for s in rec.steps)
    # Once it ended (its complete is out first), nothing of it stays held.
    wait_until(lambda: dispatcher.rt.records.running_ids() == [], 5, what="the release")


def test_a_failed_step_stops_the_playbook_unless_it_may_fail(
    start_worker: StartWorker, dispatcher: CeleryDispatcher, collect: Collect
) -> None:
    start_worker()
    stops = dispatcher.submit_playbook(
        playbook(
            {"id": "ok", "command": "echo ok"},
            {"id": "bad", "name": "Break", "command": "echo broke; exit 3"},
            {"id": "never", "command": "echo never"},
        )
    )
    goes_on = dispatcher.submit_playbook(
        playbook(
            {"id": "ok", "command": "echo ok"},
            {"id": "bad", "command": "exit 3", "continue_on_error": True},
            {"id": "after", "command": "echo after"},
        )
    )
    events = collect(stops)
    assert step_events(events) == [(name, n) for n in (1, 2) for name in STEP_EVENTS]
    failed = payloads(events, "playbook_step_complete")[1]
    assert failed["success"] is False and failed["exitCode"] == 3
    assert failed["error"] == "exit code 3" and failed["continueOnError"] is False
    assert "never" not in output_of(events)
    done = payloads(events)[-1]
    assert done["status"] == "failed" and done["exitCode"] == 3
    assert done["error"] == 'step 2 "Break" failed: exit code 3'
    steps = record(dispatcher, stops).steps or []
    assert [s.status for s in steps] == ["completed", "failed", "pending"]

    events = collect(goes_on)
    assert [n for name, n in step_events(events) if name == "playbook_step_start"] == [1, 2, 3]
    bad = payloads(events, "playbook_step_complete")[1]
    assert bad["success"] is False and bad["continueOnError"] is True and bad["exitCode"] == 3
    assert output_of(events).endswith("after\n")
    done = payloads(events)[-1]
    assert done["status"] == "completed" and done["exitCode"] == 0 and "error" not in done
    steps = record(dispatcher, goes_on).steps or []
    assert [s.status for s in steps] == ["completed", "failed", "completed"]


def test_retries_rerun_a_failed_step_in_one_start_and_one_complete(
    start_worker: StartWorker, dispatcher: CeleryDispatcher, collect: Collect, tmp_path: Path
) -> None:
    start_worker()
    counter = tmp_path / "count"
    flaky = (
        f"n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}; "
        'echo "attempt $n"; [ "$n" -ge 3 ]'
    )
    ex = dispatcher.submit_playbook(
        playbook(
            {"id": "flaky", "command": flaky, "retries": 2},
            {"id": "hopeless", "command": "exit 4", "retries": 1, "continue_on_error": True},
            {"id": "last", "command": "echo last"},
        )
    )
    events = collect(ex)
    assert step_events(events) == [(name, n) for n in (1, 2, 3) for name in STEP_EVENTS]
    first, second, third = payloads(events, "playbook_step_complete")
    assert first["success"] is True and first["attempts"] == 3 and first["exitCode"] == 0
    assert second["success"] is False and second["attempts"] == 2 and second["exitCode"] == 4
    assert third["attempts"] == 1
    flaky_out = "".join(
        p["output"] for p in payloads(events, "execution_output") if p["stepId"] == "flaky"
    )
    # Every attempt's output is streamed, each failed one followed by a retry notice.
    assert flaky_out == (
        "attempt 1\n[cloudops] attempt 1 of 3 failed (exit code 1); retrying\n"
        "attempt 2\n[cloudops] attempt 2 of 3 failed (exit code 1); retrying\n"
        "attempt 3\n"
    )
    assert counter.read_text() == "3\n"
    assert payloads(events)[-1]["status"] == "completed"
    steps = record(dispatcher, ex).steps or []
    assert [(s.status, s.attempts) for s in steps] == [
        ("completed", 3), ("failed", 2), ("completed", 1)
    ]  # fmt: skip


def test_a_step_timeout_fails_the_step_and_times_out_the_playbook(
    start_worker: StartWorker, dispatcher: CeleryDispatcher, collect: Collect
) -> None:
    start_worker()
    stops = dispatcher.submit_playbook(
        playbook(
            {"id": "slow", "name": "Slow", "command": "echo begin; sleep 30", "timeout": 1},
            {"id": "never", "command": "echo never"},
        )
    )
    goes_on = dispatcher.submit_playbook(
        playbook(
            {"id": "slow", "command": "sleep 30", "timeout": 1, "continue_on_error": True},
            {"id": "after", "command": "echo after"},
            options={"timeout": 20},
        )
    )
    events = collect(stops)
    step = payloads(events, "playbook_step_complete")[0]
    assert step["success"] is False and step["error"] == "timed out after 1 s"
    assert "exitCode" not in step
    assert [n for name, n in step_events(events)] == [1, 1]
    done = payloads(events)[-1]
    assert done["status"] == "timeout" and done["error"] == 'step 1 "Slow" timed out after 1 s'
    steps = record(dispatcher, stops).steps or []
    assert [s.status for s in steps] == ["timeout", "pending"]

    events = collect(goes_on)
    assert payloads(events)[-1]["status"] == "completed"
    assert output_of(events) == "after\n"
    steps = record(dispatcher, goes_on).steps or []
    assert [s.status for s in steps] == ["timeout", "completed"]


@pytest.mark.brokers
def test_each_step_runs_on_the_worker_of_its_queue(
    start_worker: StartWorker, dispatcher: CeleryDispatcher, collect: Collect
) -> None:
    start_worker(hostname="a@test", queues="hostA", env={"HOST_ROLE": "A"})
    start_worker(hostname="b@test", queues="hostB", env={"HOST_ROLE": "B"})
    ex = dispatcher.submit_playbook(
        playbook(
            {"id": "first", "command": "echo role=$HOST_ROLE", "queue": "hostA"},
            {"id": "second", "command": "echo role=$HOST_ROLE", "queue": "hostB"},
            {"id": "third", "command": "echo role=$HOST_ROLE", "queue": "{{ params.q }}"},
            params={"q": "hostB"},
        ),
        {"q": "hostA"},
    )
    events = collect(ex)
    outs = payloads(events, "execution_output")
    assert [(p["stepId"], p["output"]) for p in outs] == [
        ("first", "role=A\n"),
        ("second", "role=B\n"),
        ("third", "role=A\n"),
    ]
    hosts = ["a@test", "b@test", "a@test"]
    assert [p["worker"] for p in payloads(events, "playbook_step_start")] == hosts
    assert [p["worker"] for p in payloads(events, "playbook_step_complete")] == hosts
    assert payloads(events, "execution_started")[0]["worker"] == "a@test"
    done = payloads(events)[-1]
    assert done["status"] == "completed" and done["worker"] == "a@test"
    assert [s.worker for s in record(dispatcher, ex).steps or []] == hosts


@pytest.mark.brokers
def test_cancel_during_step_two_kills_it_and_step_three_never_starts(
    start_worker: StartWorker, dispatcher: CeleryDispatcher, collect: Collect, tmp_path: Path
) -> None:
    worker = start_worker()
    marker = new_marker()
    flag = tmp_path / "step3-ran"
    ex = dispatcher.submit_playbook(
        playbook(
            {"id": "one", "command": "echo one"},
            {"id": "two", "command": tree_script(marker)},
            {"id": "three", "command": f"touch {flag}"},
        )
    )
    wait_tree_up(marker)
    t0 = time.monotonic()
    dispatcher.cancel(ex)
    events = collect(ex, timeout_s=30)
    assert time.monotonic() - t0 < 2.0 + 2.0  # within the kill grace plus slack
    assert [e.event for e in events] == [
        "execution_started",
        "playbook_step_start",
        "execution_output",
        "playbook_step_complete",
        "playbook_step_start",
        "execution_output",
        "playbook_step_complete",
        "execution_cancelled",
        "execution_complete",
    ]
    two = payloads(events, "playbook_step_complete")[1]
    assert two["stepNumber"] == 2 and two["success"] is False and two["error"] == "cancelled"
    assert "exitCode" not in two
    cancelled = payloads(events, "execution_cancelled")[0]
    # The playbook's output so far, over its steps (step 1 ran before the cancel too).
    assert cancelled["partialOutput"] == "one\nstarted\n" and cancelled["reason"]
    assert payloads(events)[-1]["status"] == "cancelled"
    assert_tree_dead(marker)
    assert f"Terminating {ex}.s2" in worker.log()  # Celery revoked the step's own task
    assert not flag.exists()
    assert f"{ex}.s3" not in worker.log()
    steps = record(dispatcher, ex).steps or []
    assert [s.status for s in steps] == ["completed", "cancelled", "pending"]
    assert record(dispatcher, ex).status == "cancelled"


def test_cancel_between_two_steps_ends_the_run_and_the_late_step_refuses(
    start_worker: StartWorker, dispatcher: CeleryDispatcher, collect: Collect, tmp_path: Path
) -> None:
    start_worker(hostname="first@test")
    flag = tmp_path / "step2-ran"
    ex = dispatcher.submit_playbook(
        playbook(
            {"id": "one", "command": "echo one"},
            # Nobody consumes this queue yet: the run waits between its two steps.
            {"id": "two", "command": f"touch {flag}", "queue": "later"},
        )
    )
    records = dispatcher.rt.records
    wait_until(
        lambda: records.fields(ex, "stepQueued", "handOff") == ["1", None],
        20,
        what="the hand-off, its task sent",
    )
    # Waiting in a queue is not being lost: the reaper passes it by, lease or no lease.
    assert records.running_ids() == [] and not records.lease_alive(ex)
    assert reap_once(dispatcher.rt, dispatcher.tasks) == []
    assert record(dispatcher, ex).status == "running"
    dispatcher.cancel(ex)
    events = collect(ex, timeout_s=10)
    assert [e.event for e in events][-2:] == ["execution_cancelled", "execution_complete"]
    assert [name for name, _ in step_events(events)] == list(STEP_EVENTS)
    done = payloads(events)[-1]
    started = payloads(events, "execution_started")[0]
    assert done["status"] == "cancelled" and done["startedAt"] == started["startedAt"]
    assert payloads(events, "execution_cancelled")[0]["partialOutput"] == "one\n"
    late = start_worker(hostname="late@test", queues="later")
    wait_task_disposed(late, "cloudops.run_playbook_step", f"{ex}.s2")
    assert not flag.exists()
    assert dispatcher.rt.redis.xlen(dispatcher.rt.keys.history(ex)) == len(events)


@pytest.mark.brokers
def test_worker_lost_mid_step_fails_the_playbook_and_frees_its_slot(
    start_worker: StartWorker, dispatcher: CeleryDispatcher, collect: Collect
) -> None:
    start_worker(hostname="survivor@test")  # the default queue
    doomed = start_worker(hostname="doomed@test", queues="doomed")
    marker = new_marker()
    deploy = playbook(
        {"id": "prepare", "command": "echo prepared", "queue": "{{ params.q }}"},
        {"id": "long", "command": "sleep {{ params.s }}", "queue": "{{ params.q }}"},
        {"id": "after", "command": "echo after", "queue": "{{ params.q }}"},
        name=f"deploy {uuid.uuid4().hex[:6]}",
        max_concurrent=1,
    )
    lost = dispatcher.submit_playbook(deploy, {"q": "doomed", "s": marker})
    waiting = dispatcher.submit_playbook(deploy, {"q": "cloudops", "s": "0"})
    assert record(dispatcher, waiting).status == "queued"
    wait_until(lambda: live_pids_with(marker), 15, what="step 2 to run")
    t0 = time.monotonic()
    doomed.kill_tree()  # the host is gone: main and pool processes at once
    events = collect(lost, timeout_s=30)
    assert time.monotonic() - t0 < 15  # lease 4 s + reaper scan every 2 s + slack
    assert step_events(events) == [(name, n) for n in (1, 2) for name in STEP_EVENTS]
    step = payloads(events, "playbook_step_complete")[1]
    assert step["success"] is False and "worker lost" in step["error"]
    done = payloads(events)[-1]
    assert done["status"] == "failed" and done["error"].startswith("worker lost")
    steps = record(dispatcher, lost).steps or []
    assert [s.status for s in steps] == ["completed", "failed", "pending"]
    # The lost run's slot went to the run waiting for it, on the survivor.
    events = collect(waiting, timeout_s=30)
    assert payloads(events)[-1]["status"] == "completed"
    assert {p["worker"] for p in payloads(events, "playbook_step_start")} == {"survivor@test"}
    wait_until(lambda: not live_pids_with(marker), 5, what="the command to die")


BAD_PLAYBOOKS: list[tuple[str, str, dict[str, str] | None, str]] = [
    # (playbook YAML, what the message must say, params, field)
    ("", "is empty", None, "playbook"),
    ("- a\n- b\n", "must be a mapping", None, "playbook"),
    ("name: x\nsteps: [\n", "YAML syntax error", None, "playbook"),
    ("name: x\n", "steps", None, "playbook"),
    ("name: x\nsteps: []\n", "at least one step", None, "playbook"),
    ("name: x\nsteps: echo hi\n", "must be a list", None, "playbook"),
    ("name: ''\nsteps:\n  - command: echo\n", "name", None, "playbook"),
    ("name: x\nstepz: []\nsteps:\n  - command: echo\n", "stepz", None, "playbook"),
    ("name: x\nsteps:\n  - name: no command\n", "command", None, "playbook"),
    ("name: x\nsteps:\n  - comand: echo\n", "comand", None, "playbook"),
    ("name: x\nsteps:\n  - command: 42\n", "must be a string", None, "playbook"),
    ("name: x\nsteps:\n  - command: '  '\n", "must not be empty", None, "playbook"),
    ("name: x\nsteps:\n  - {id: a, command: echo}\n  - {id: a, command: echo}\n",
     "duplicate step id", None, "playbook"),
    ("name: x\nsteps:\n  - {command: echo, timeout: 0}\n", "timeout", None, "playbook"),
    ("name: x\nsteps:\n  - {command: echo, timeout: ten}\n", "timeout", None, "playbook"),
    ("name: x\nsteps:\n  - {command: echo, retries: -1}\n", "retries", None, "playbook"),
    ("name: x\nsteps:\n  - {command: echo, retries: 99}\n", "retries", None, "playbook"),
    ("name: x\nsteps:\n  - {command: echo, continue_on_error: 'yes'}\n", "continue_on_error",
     None, "playbook"),
    ("name: x\nsteps:\n  - {command: echo, env: {1X: a}}\n", "environment variable", None,
     "playbook"),
    ("name: x\nsteps:\n  - {command: echo, queue: 'a b'}\n", "queue", None, "playbook"),
    ("name: x\nmax_concurrent: 0\nsteps:\n  - command: echo\n", "max_concurrent", None,
     "playbook"),
    ("name: x\nsteps:\n  - command: echo {{ params.who }}\n", "params.who", None, "params"),
    ("name: x\nsteps:\n  - command: {{ params.who }}\n", "quoted", None, "playbook"),
    ("name: x\nsteps:\n  - command: echo hi\n", "unknown param 'who'", {"who": "me"}, "params"),
    ("name: x\nsteps:\n  - {command: echo, aws_region: '{{ params.r }}'}\n", "one word",
     {"r": "eu west 1"}, "params"),
    ("name: x\nname: y\nsteps:\n  - command: echo\n", "appears twice", None, "playbook"),
    ("name: x\nsteps:\n  - command: 'echo {{ params.x '\n", "is never closed", None,
     "playbook"),
]  # fmt: skip


def test_bad_playbooks_are_refused_before_anything_exists(
    dispatcher: CeleryDispatcher, rclient: redis.Redis, key_prefix: str
) -> None:
    assert len(BAD_PLAYBOOKS) >= 20
    for n, (text, says, params, field) in enumerate(BAD_PLAYBOOKS):
        source = f"bad-{n}.yml"
        with pytest.raises(PlaybookError) as info:
            dispatcher.submit_playbook(text, params, source=source)
        message = str(info.value)
        assert source in message, message
        assert says in message, f"{says!r} not in {message!r}"
        assert info.value.field == field, message
    # No record, no index entry, no task in any queue: not one key under the test's prefix.
    assert list(rclient.scan_iter(match=f"{key_prefix}:*")) == []


@pytest.mark.brokers
def test_500_playbooks_at_once_all_complete_in_order(
    start_worker: StartWorker, dispatcher: CeleryDispatcher
) -> None:
    start_worker(concurrency=4)
    result = drain_playbooks(dispatcher, runs=500, steps=3, timeout_s=150)
    print(f"\n[drain] {result.summary()}")
    odd = [(ex, dispatcher.rt.records.raw(ex)) for ex in result.execution_ids]
    odd = [(ex, raw) for ex, raw in odd if raw.get("status") != "completed"]
    assert result.statuses == {"completed": 500}, odd[:3]
    # Hundreds submitted at once wait `queued` (not failed) and drain at the workers' pace.
    assert result.queued_after_submit > 0
    # A started run goes on before new ones start (worker.finish.FIRST_STEP_PRIORITY): about
    # as many runs are `running` at once as the worker has slots, not the whole batch.
    assert result.max_running <= 2 * 4
    for ex in result.execution_ids:
        assert history_problems(dispatcher, ex, steps=3) == [], ex
    wait_until(lambda: dispatcher.rt.records.running_ids() == [], 5, what="the releases")


def test_max_concurrent_one_never_overlaps(
    start_worker: StartWorker, dispatcher: CeleryDispatcher, collect: Collect
) -> None:
    start_worker(concurrency=4)
    name = f"deploy {uuid.uuid4().hex[:6]}"
    deploy = playbook(
        {"id": "a", "command": "echo a; sleep 0.1"},
        {"id": "b", "command": "echo b"},
        name=name,
        max_concurrent=1,
    )
    ids = [dispatcher.submit_playbook(deploy) for _ in range(11)]
    # One runs, the rest wait queued (not failed) for the slot.
    queued = [record(dispatcher, ex).status for ex in ids].count(Status.QUEUED)
    assert queued >= 9
    # A waiting run can be cancelled: it leaves the waiting list and never starts.
    gone = ids.pop()
    dispatcher.cancel(gone)
    assert [e.event for e in collect(gone)] == ["execution_cancelled", "execution_complete"]
    intervals = []
    for ex in ids:
        events = collect(ex)
        assert payloads(events)[-1]["status"] == "completed"
        started = payloads(events, "execution_started")[0]["startedAt"]
        completed = payloads(events, "execution_complete")[0]["completedAt"]
        intervals.append((parse_time(started), parse_time(completed)))
    intervals.sort()
    for (_, prev_end), (next_start, _) in itertools.pairwise(intervals):
        assert next_start >= prev_end, "two runs of a max_concurrent: 1 playbook overlapped"
    # They ran in submission order, and nothing is left holding or waiting for a slot.
    starts = [record(dispatcher, ex).started_at or "" for ex in ids]
    assert starts == sorted(starts)
    rt = dispatcher.rt
    wait_until(
        lambda: rt.redis.exists(rt.keys.slots(name), rt.keys.waiting(name)) == 0,
        5,
        what="the last slot to be freed",
    )


def ghost_between_steps(dispatcher: CeleryDispatcher) -> str:
    """A two-step run whose first step a worker (that never existed) claimed and finished, and
    which it began to hand off to step 2: what a worker leaves when it dies right there."""
    queue = f"nobody-{uuid.uuid4().hex[:8]}"
    ex = dispatcher.submit_playbook(
        playbook({"id": "one", "command": "true", "queue": queue}, {"id": "two", "command": "true"})
    )
    records = dispatcher.rt.records
    assert records.claim(ex, "ghost@test", f"{ex}.s1", step=0) == "ok"
    assert records.hand_off(ex, 1, f"{ex}.s2", "ghost@test") == "ok"
    return ex


def test_a_worker_lost_between_hand_off_and_send_ends_the_run(
    dispatcher: CeleryDispatcher, collect: Collect, keys: Any, rclient: redis.Redis
) -> None:
    """The next step's task was never sent: nothing would ever run it, so the run must not be
    exempt from the reaper as a queued step is. While the lease lives it is left alone."""
    ex = ghost_between_steps(dispatcher)
    records = dispatcher.rt.records
    assert ex in records.running_ids() and records.lease_alive(ex)
    assert reap_once(dispatcher.rt, dispatcher.tasks) == []
    rclient.delete(keys.lease(ex))  # the lease lapses: its worker stopped renewing it
    assert reap_once(dispatcher.rt, dispatcher.tasks) == [ex]
    done = payloads(collect(ex, timeout_s=10))[-1]
    assert done["status"] == "failed" and "worker lost: ghost@test" in done["error"]
    assert record(dispatcher, ex).status == "failed"
    # The task, had it been sent after all, would be refused.
    assert records.claim(ex, "late@test", f"{ex}.s2", expect=Status.RUNNING, step=1) == "ended"


def test_a_confirmed_hand_off_waits_and_a_late_confirmation_spares_the_claimer(
    dispatcher: CeleryDispatcher,
) -> None:
    records = dispatcher.rt.records
    ex = ghost_between_steps(dispatcher)
    assert records.handed_off(ex, 1)
    assert ex not in records.running_ids() and not records.lease_alive(ex)
    assert reap_once(dispatcher.rt, dispatcher.tasks) == []
    assert record(dispatcher, ex).status == "running"

    # Another host claims step 2 before the first worker confirms its send: the confirmation
    # must leave the claimer's lease and running-set entry alone.
    ex2 = ghost_between_steps(dispatcher)
    assert records.claim(ex2, "fast@test", f"{ex2}.s2", expect=Status.RUNNING, step=1) == "ok"
    assert not records.handed_off(ex2, 1)
    assert ex2 in records.running_ids() and records.lease_alive(ex2)
    assert records.field(ex2, "worker") == "fast@test"
