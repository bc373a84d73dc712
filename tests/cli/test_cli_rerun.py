"""`cloudops rerun`: embedded, from an earlier process's run in the SQLite history (its Redis is
gone with that process), and with `--remote` through a relay and a real worker; bad usage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from events.settings import Settings
from tests.cli.test_cli import cloudops
from tests.conftest import StartWorker
from tests.helpers import embedded_env
from tests.relay.helpers import start_relay

pytestmark = pytest.mark.integration


def test_embedded_rerun_of_an_earlier_run_from_the_history(tmp_path: Path) -> None:
    env = {**embedded_env(), "XDG_DATA_HOME": str(tmp_path)}
    flag = tmp_path / "fails"
    flag.touch()
    book = tmp_path / "two.yaml"
    book.write_text(
        "name: two\nsteps:\n"
        "  - {id: first, command: echo first}\n"
        f"  - {{id: second, command: 'test ! -e {flag} && echo second'}}\n"
    )
    r = cloudops("run", "--playbook", str(book), env=env)
    assert r.returncode == 1, r.stderr
    old = json.loads(cloudops("ls", "--json", env=env).stdout.splitlines()[0])
    assert old["status"] == "failed"
    flag.unlink()
    r = cloudops("rerun", old["executionId"], "--failed", "--json", env=env)
    assert r.returncode == 0, r.stderr
    envelopes = [json.loads(line) for line in r.stdout.splitlines()]
    starts = [e["payload"] for e in envelopes if e["event"] == "playbook_step_start"]
    assert [(p["stepId"], p["stepNumber"], p["totalSteps"]) for p in starts] == [("second", 1, 1)]
    outputs = [e["payload"]["output"] for e in envelopes if e["event"] == "execution_output"]
    assert outputs == ["second\n"]
    new = json.loads(cloudops("ls", "--json", env=env).stdout.splitlines()[0])
    assert new["rerunOf"] == old["executionId"] and new["status"] == "completed"
    # Now that every step succeeded, --failed has nothing to rerun: one line, exit 2.
    r = cloudops("rerun", new["executionId"], "--failed", env=env)
    assert r.returncode == 2 and r.stderr.strip().endswith("nothing to rerun: every step succeeded")
    assert len(r.stderr.splitlines()) == 1


@pytest.mark.parametrize("args", [[], ["ex_00000000000000000000"], ["x", "--hosts", "all"]])
def test_bad_usage_is_one_line_and_exit_2(args: list[str], tmp_path: Path) -> None:
    r = cloudops("rerun", *args, env={**embedded_env(), "XDG_DATA_HOME": str(tmp_path)})
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("cloudops: error:")


def test_remote_rerun_follows_the_new_execution(
    start_worker: StartWorker, settings: Settings, tmp_path: Path
) -> None:
    start_worker()
    relay = start_relay(
        settings, tmp_path / "relay.log", tokens=("tok-r",), env={"RELAY_TEST_DISPATCHER": "celery"}
    )
    try:
        env = {**embedded_env(), "CLOUDOPS_API_URL": relay.base_url, "CLOUDOPS_API_TOKEN": "tok-r"}
        flag = tmp_path / "fails"
        flag.touch()
        r = cloudops("run", "--", f"test ! -e {flag} && echo mended; exit 5", env=env)
        assert r.returncode == 5
        old = json.loads(cloudops("ls", "--json", env=env).stdout.splitlines()[0])
        flag.unlink()
        r = cloudops("rerun", old["executionId"], env=env)
        # The same command again, followed like `run`: its output, its exit code.
        assert (r.returncode, r.stdout) == (5, "mended\n")
        assert f"(rerun of {old['executionId']})" in r.stderr
        new = json.loads(cloudops("ls", "--json", env=env).stdout.splitlines()[0])
        assert new["rerunOf"] == old["executionId"]
        r = cloudops("rerun", "ex_00000000000000000000", "--remote", relay.base_url, env=env)
        assert r.returncode == 2 and "unknown execution" in r.stderr
    finally:
        relay.stop()
