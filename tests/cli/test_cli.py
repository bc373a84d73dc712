"""The `cloudops` CLI through real subprocesses: exit codes, --json, usage errors, and the
same event sequence embedded and on a real worker."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from events.models import ExecutionStartedPayload, decode
from events.settings import Settings
from tests.conftest import StartWorker, worker_env
from tests.helpers import REPO, cloudops_argv, embedded_env
from tests.test_playbook_problems import FOUR_EXPECTED, FOUR_IN_THREE


def cloudops(*args: str, env: dict[str, str] | None = None, timeout_s: float = 60) -> Any:
    return subprocess.run(
        cloudops_argv(*args),
        env=env or embedded_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO,
    )


@pytest.mark.parametrize(
    ("command", "code"),
    [("exit 0", 0), ("exit 3", 3), ("echo out; echo err >&2; exit 7", 7)],
)
def test_run_exits_with_the_commands_exit_code(command: str, code: int) -> None:
    assert cloudops("run", "--", command).returncode == code


def test_run_prints_stdout_and_stderr_apart_with_a_summary() -> None:
    r = cloudops("run", "--", "echo out; echo err >&2")
    assert r.stdout == "out\n"
    assert "err\n" in r.stderr
    assert "[cloudops] completed" in r.stderr.splitlines()[-1]


def test_timeout_exits_124_and_cancel_130() -> None:
    assert cloudops("run", "--timeout", "1", "--", "sleep 30").returncode == 124


def test_json_prints_valid_envelopes_only() -> None:
    r = cloudops("run", "--json", "--", "echo one; echo two >&2")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    envs = [decode(line) for line in lines]
    assert [e.event for e in envs] == [
        "execution_started",
        "execution_output",
        "execution_output",
        "execution_complete",
    ]
    assert [e.id for e in envs] == [1, 2, 3, 4]
    assert r.stderr == ""


@pytest.mark.parametrize(
    "args",
    [
        ["run"],
        ["run", "--bogus", "--", "ls"],
        ["run", "--timeout", "0", "--", "ls"],
        ["run", "--timeout", "soon", "--", "ls"],
        ["run", "--timeout", "99999999999999999999999", "--", "ls"],
        ["run", "--playbook", "/nonexistent.yml"],
        ["run", "--param", "x=1", "--", "ls"],
        ["run", "--playbook", "deploy/examples/hello.yml", "--param", "novalue"],
        ["nosuchcommand"],
        ["cancel"],
    ],
)
def test_bad_usage_is_one_line_on_stderr_and_exit_2(args: list[str]) -> None:
    r = cloudops(*args)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("cloudops: error: ")
    assert r.stdout == ""


def comparable(lines: list[str]) -> list[dict[str, Any]]:
    """Envelopes without what differs between runs: ids, times, durations, hosts."""
    varying = {"executionId", "startedAt", "completedAt", "timestamp", "durationMs", "worker"}
    out = []
    for line in lines:
        env = json.loads(line)
        payload = {k: v for k, v in env["payload"].items() if k not in varying}
        out.append({"event": env["event"], "payload": payload})
    return out


@pytest.mark.integration
def test_same_event_sequence_embedded_and_on_a_worker(
    start_worker: StartWorker, settings: Settings, tmp_path: Path
) -> None:
    command = "echo one; sleep 0.1; echo two >&2; sleep 0.1; printf 'no newline'; exit 4"
    embedded = cloudops("run", "--json", "--", command)
    start_worker()
    fleet = cloudops("run", "--json", "--", command, env=worker_env(settings))
    assert embedded.returncode == fleet.returncode == 4
    assert comparable(embedded.stdout.splitlines()) == comparable(fleet.stdout.splitlines())
    assert len(embedded.stdout.splitlines()) == 5


def test_a_bad_playbook_is_one_line_per_problem_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "build.yml"
    path.write_text(FOUR_IN_THREE)
    r = cloudops("run", "--playbook", str(path), "--param", "nope=1")
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    expected = [
        f"cloudops: error: {path}, line {line}, step {number} ({step_id}), field {key}: "
        for _, line, number, step_id, key, _ in FOUR_EXPECTED
    ] + [f"cloudops: error: {path}, params: unknown param 'nope'"]
    lines = r.stderr.splitlines()
    assert len(lines) == len(expected), r.stderr
    for line, start in zip(lines, expected, strict=True):
        assert line.startswith(start), line
    assert "Traceback" not in r.stderr


def test_a_playbook_without_a_name_is_named_after_its_file(tmp_path: Path) -> None:
    path = tmp_path / "nightly-check.yml"
    path.write_text("steps:\n  - command: echo hi\n")
    r = cloudops("run", "--json", "--playbook", str(path))
    assert r.returncode == 0, r.stderr
    started = decode(r.stdout.splitlines()[0]).payload
    assert isinstance(started, ExecutionStartedPayload)
    assert started.command == "nightly-check"
