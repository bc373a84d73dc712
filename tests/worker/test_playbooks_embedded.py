"""Playbooks in embedded mode (no Redis, no worker): the same step core and the same events as
the fleet, cancel mid-run, `max_concurrent`, and `cloudops run --playbook` end to end."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.wiring import Local
from cli.wiring import embedded as embedded_parts
from events.models import parse_time
from events.records import ExecutionRecord
from events.settings import Settings
from events.subscriber import Follower
from events.vocabulary import Status
from events.wire import RawEvent
from tests.helpers import REPO, assert_one_output_per_step, cloudops_argv, embedded_env, payloads
from tests.worker.trees import assert_tree_dead, new_marker, tree_script, wait_tree_up
from worker.playbook.errors import PlaybookError


class Embedded:
    """Embedded mode as `cloudops run` wires it (cli.wiring.embedded), seen by a test."""

    def __init__(self, parts: Local) -> None:
        self.parts = parts
        self.rt = parts.runtime
        self.submit_playbook = parts.dispatcher.submit_playbook
        self.submit_command = parts.dispatcher.submit_command
        self.cancel = parts.dispatcher.cancel
        self.worker = parts.dispatcher.tasks.worker  # type: ignore[attr-defined]

    def record(self, ex: str) -> ExecutionRecord | None:
        return self.rt.records.get(ex)

    def records(self) -> list[ExecutionRecord]:
        return self.rt.records.recent(limit=1000)


@pytest.fixture
def embedded() -> Iterator[Embedded]:
    yield Embedded(embedded_parts(Settings(kill_grace_s=1.0)))


def follow(d: Embedded, ex: str) -> list[RawEvent]:
    return list(Follower(d.rt.redis, d.rt.keys, ex))


def test_embedded_playbook_gives_the_fleet_events(embedded: Embedded) -> None:
    ex = embedded.submit_playbook(
        {
            "name": "Embedded",
            "steps": [
                {"id": "one", "command": "echo one"},
                {"id": "two", "command": "echo two >&2; exit 5", "continue_on_error": True},
                {"id": "three", "command": "echo {{ params.word }}"},
            ],
        },
        {"word": "three; echo injected"},
    )
    events = follow(embedded, ex)
    assert_one_output_per_step(events, steps=3)
    started = payloads(events, "execution_started")[0]
    assert started["commandType"] == "playbook" and started["worker"] == embedded.worker
    assert [(p["stepId"], p["output"]) for p in payloads(events, "execution_output")] == [
        ("one", "one\n"),
        ("two", "two\n"),
        ("three", "three; echo injected\n"),  # a param value is never code
    ]
    two = payloads(events, "playbook_step_complete")[1]
    assert two["success"] is False and two["exitCode"] == 5 and two["continueOnError"] is True
    assert payloads(events)[-1]["status"] == "completed"
    rec = embedded.record(ex)
    assert rec is not None and rec.status == "completed"
    assert [(s.step_id, s.status) for s in rec.steps or []] == [
        ("one", "completed"),
        ("two", "failed"),
        ("three", "completed"),
    ]


def test_embedded_failure_stops_and_bad_playbooks_are_refused(
    embedded: Embedded,
) -> None:
    ex = embedded.submit_playbook(
        {"name": "Stops", "steps": [{"command": "exit 2"}, {"command": "echo never"}]}
    )
    events = follow(embedded, ex)
    assert [p["stepNumber"] for p in payloads(events, "playbook_step_start")] == [1]
    done = payloads(events)[-1]
    assert done["status"] == "failed" and done["exitCode"] == 2
    assert done["error"] == 'step 1 "step_1" failed: exit code 2'
    with pytest.raises(PlaybookError, match=r"bad\.yml.*duplicate step id"):
        embedded.submit_playbook(
            "name: x\nsteps:\n  - {id: a, command: echo}\n  - {id: a, command: echo}\n",
            source="bad.yml",
        )
    assert [r.execution_id for r in embedded.records()] == [ex]


def test_embedded_cancel_mid_step(embedded: Embedded, tmp_path: Path) -> None:
    marker = new_marker()
    flag = tmp_path / "step3"
    ex = embedded.submit_playbook(
        {
            "name": "Cancel me",
            "steps": [
                {"command": "echo one"},
                {"command": tree_script(marker)},
                {"command": f"touch {flag}"},
            ],
        }
    )
    wait_tree_up(marker)
    embedded.cancel(ex)
    events = follow(embedded, ex)
    assert [e.event for e in events][-4:] == [
        "execution_output",
        "playbook_step_complete",
        "execution_cancelled",
        "execution_complete",
    ]
    two = payloads(events, "playbook_step_complete")[1]
    assert two["success"] is False and two["error"] == "cancelled"
    assert payloads(events, "execution_cancelled")[0]["partialOutput"] == "one\nstarted\n"
    assert len(payloads(events, "playbook_step_start")) == 2
    assert payloads(events)[-1]["status"] == "cancelled"
    assert_tree_dead(marker)
    assert not flag.exists()


def test_embedded_max_concurrent_waits_queued_and_a_waiting_run_can_be_cancelled(
    embedded: Embedded,
) -> None:
    deploy: dict[str, Any] = {
        "name": "Deploy",
        "max_concurrent": 1,
        "steps": [{"command": "sleep 0.2"}, {"command": "echo done"}],
    }
    ids = [embedded.submit_playbook(deploy) for _ in range(4)]
    statuses = [r.status for r in map(embedded.record, ids) if r is not None]
    assert statuses.count(Status.QUEUED) >= 3
    embedded.cancel(ids[-1])
    spans = []
    for ex in ids[:-1]:
        events = follow(embedded, ex)
        assert payloads(events)[-1]["status"] == "completed"
        started = payloads(events, "execution_started")[0]["startedAt"]
        completed = payloads(events)[-1]["completedAt"]
        spans.append((parse_time(started), parse_time(completed)))
    for (_, end), (start, _) in itertools.pairwise(sorted(spans)):
        assert start >= end
    events = follow(embedded, ids[-1])
    assert [e.event for e in events] == ["execution_cancelled", "execution_complete"]


def test_cli_runs_the_example_playbook_with_no_redis() -> None:
    argv = cloudops_argv("run", "--playbook", "deploy/examples/hello.yml", "--param", "greeting=hi")
    proc = subprocess.run(
        argv, cwd=REPO, env=embedded_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("hi\n") and "progress 5/5\ndone\n" in proc.stdout
    for n in (1, 2, 3):
        assert f"step {n}/3" in proc.stderr
    assert "[cloudops] completed" in proc.stderr

    argv = cloudops_argv("run", "--json", "--playbook", "deploy/examples/hello.yml")
    proc = subprocess.run(
        argv, cwd=REPO, env=embedded_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    envelopes = [json.loads(line) for line in proc.stdout.splitlines()]
    names = [e["event"] for e in envelopes]
    assert names[0] == "execution_started" and names[-1] == "execution_complete"
    assert names.count("playbook_step_start") == names.count("playbook_step_complete") == 3
    outputs = [e["payload"] for e in envelopes if e["event"] == "execution_output"]
    assert outputs and {p["stepId"] for p in outputs} == {"greet", "stderr", "progress"}


def test_cli_refuses_a_bad_playbook_with_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("name: x\nsteps:\n  - {command: echo, timeout: 0}\n")
    proc = subprocess.run(
        [sys.executable, "-c", "from cli.main import main; main()", "run", "--playbook", str(bad)],
        cwd=REPO,
        env=embedded_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "timeout" in lines[0]
