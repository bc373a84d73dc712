"""Saved playbooks on a real fleet (issue 17 item 1): a relay and a worker on PostgreSQL.

Two saves give versions 1 and 2; a run by name runs 2, a run of version 1 runs 1, and the
record (from Redis, then from the database) says which; a bad playbook is a 422 with nothing
stored; unknown names and versions are clear errors; `cloudops playbook push|ls|show` and
`cloudops run --playbook-name` through the relay; and without a database, 503 and exit 2."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from events.db.engine import make_engine
from events.db.errors import NO_DATABASE
from events.db.schema import executions
from tests.db.fleet import TOKEN, Fleet, put_playbook, running_fleet
from tests.helpers import embedded_env, run_cloudops, wait_until, worker_env
from tests.relay.helpers import RelayProcess, start_relay

pytestmark = pytest.mark.integration

V1 = "name: rotate-logs\nsteps:\n  - id: rotate\n    command: echo rotating v1\n"
V2 = (
    "name: rotate-logs\nparams: {keep: '3'}\n"
    "steps:\n  - id: rotate\n    command: echo rotating v2 keep={{ params.keep }}\n"
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[Fleet]:
    with running_fleet(tmp_path_factory.mktemp("saved-playbooks"), pg_url, concurrency=2) as f:
        yield f


def _ended(api: httpx.Client, execution_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any]:
        rec: dict[str, Any] = api.get(f"/api/executions/{execution_id}").json()
        return rec if rec["status"] not in ("queued", "running") else {}

    return wait_until(done, timeout_s=30, what=f"{execution_id} ends")


def _run(api: httpx.Client, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    resp = api.post("/api/executions", json=body)
    assert resp.status_code == 202, resp.text
    execution_id = resp.json()["executionId"]
    record = _ended(api, execution_id)
    return record, api.get(f"/api/executions/{execution_id}/output").text


def test_two_saves_then_runs_of_the_latest_and_of_version_1(
    api: httpx.Client, fleet: Fleet
) -> None:
    first, second = put_playbook(api, "rotate-logs", V1), put_playbook(api, "rotate-logs", V2)
    assert (first.status_code, first.json()["version"]) == (201, 1), first.text
    assert (second.status_code, second.json()["version"]) == (201, 2), second.text
    assert second.headers["Location"] == "/api/playbooks/rotate-logs?version=2"
    # The same text again: nothing new, the latest version answered.
    same = put_playbook(api, "rotate-logs", V2)
    assert (same.status_code, same.json()["version"]) == (200, 2)
    got = api.get("/api/playbooks/rotate-logs").json()
    assert (got["version"], got["yaml"]) == (2, V2)
    assert [v["version"] for v in got["versions"]] == [1, 2]
    assert api.get("/api/playbooks/rotate-logs", params={"version": 1}).json()["yaml"] == V1
    listed = {p["name"]: p for p in api.get("/api/playbooks").json()}
    assert listed["rotate-logs"]["version"] == 2
    assert listed["rotate-logs"]["updatedAt"] == got["createdAt"]

    # By name, no commandType (CONTRACT §10): the latest version, with the run's params.
    latest, out = _run(api, {"playbookName": "rotate-logs", "params": {"keep": 7}})
    assert (latest["status"], out) == ("completed", "rotating v2 keep=7\n")
    assert (latest["playbookName"], latest["playbookVersion"]) == ("rotate-logs", 2)
    old, out = _run(api, {"commandType": "playbook", "playbookName": "rotate-logs", "version": 1})
    assert (old["status"], out) == ("completed", "rotating v1\n")
    assert (old["playbookName"], old["playbookVersion"]) == ("rotate-logs", 1)

    # Archived, the database row and record name the version too.
    engine = make_engine(fleet.database_url)
    try:

        def stored() -> Any:
            with engine.connect() as conn:
                row = conn.execute(
                    select(executions.c.playbook_version, executions.c.record).where(
                        executions.c.execution_id == old["executionId"]
                    )
                ).first()
            return row

        row = wait_until(stored, timeout_s=15, what="the run archived")
        assert row.playbook_version == 1 and row.record["playbookVersion"] == 1
    finally:
        engine.dispose()


def test_a_bad_playbook_is_refused_and_nothing_is_stored(api: httpx.Client) -> None:
    bad = put_playbook(api, "broken", "name: broken\nsteps:\n  - name: no command here\n")
    assert bad.status_code == 422, bad.text
    # Every problem listed, each with where it is (CONTRACT §5); the saved name is the source.
    problems = bad.json()["detail"]
    assert [p["loc"] for p in problems] == [["body", "playbook", "steps", 0, "command"]]
    assert problems[0]["msg"].startswith("broken, line 3, step 1"), problems
    assert api.get("/api/playbooks/broken").status_code == 404
    assert "broken" not in {p["name"] for p in api.get("/api/playbooks").json()}
    not_utf8 = put_playbook(api, "broken", b"\xff\xfe")
    assert (not_utf8.status_code, not_utf8.json()) == (422, {"detail": "body: must be UTF-8 text"})
    bad_name = put_playbook(api, "has.space%20here", V1)
    assert bad_name.status_code == 422 and bad_name.json()["detail"].startswith("name: must be")


def test_json_body_delete_and_unknown_names(api: httpx.Client) -> None:
    saved = api.put("/api/playbooks/json-one", json={"yaml": V1})
    assert (saved.status_code, saved.json()["version"]) == (201, 1), saved.text
    missing = api.put("/api/playbooks/json-one", json={"text": V1})
    assert (missing.status_code, missing.json()) == (422, {"detail": "yaml: is required"})
    assert api.get("/api/playbooks/json-one", params={"version": 9}).status_code == 404

    unknown = api.post("/api/executions", json={"playbookName": "no-such-playbook"})
    assert unknown.status_code == 422
    assert unknown.json()["detail"] == "playbookName: no saved playbook named 'no-such-playbook'"
    no_version = api.post("/api/executions", json={"playbookName": "json-one", "version": 4})
    assert no_version.status_code == 422
    assert no_version.json()["detail"] == "version: 'json-one' has no version 4 (it has 1)"
    both = api.post("/api/executions", json={"playbookName": "json-one", "playbook": V1})
    assert both.status_code == 422 and both.json()["detail"].startswith("playbookName: ")

    assert api.delete("/api/playbooks/json-one").status_code == 204
    assert api.get("/api/playbooks/json-one").status_code == 404
    gone = api.delete("/api/playbooks/json-one")
    assert gone.status_code == 404 and "json-one" in gone.json()["detail"]


def _cli_env(fleet: Fleet, url: str) -> dict[str, str]:
    return {**worker_env(fleet.settings), "CLOUDOPS_API_URL": url, "CLOUDOPS_API_TOKEN": TOKEN}


def test_cli_push_ls_show_and_run_by_name_through_the_relay(fleet: Fleet, tmp_path: Path) -> None:
    assert fleet.relay is not None
    env = _cli_env(fleet, fleet.relay.base_url)
    path = tmp_path / "nightly.yaml"
    path.write_text("name: Nightly cleanup\nsteps:\n  - command: echo {{ params.keep }} kept\n")
    # Its name has a space: saved under the file's stem.
    pushed = run_cloudops("playbook", "push", str(path), env=env)
    assert (pushed.returncode, pushed.stdout) == (0, "nightly 1\n"), pushed.stderr
    path.write_text("name: Nightly cleanup\nsteps:\n  - command: echo {{ params.keep }} left\n")
    pushed = run_cloudops("playbook", "push", str(path), "--name", "cleanup", env=env)
    assert (pushed.returncode, pushed.stdout) == (0, "cleanup 1\n"), pushed.stderr
    again = run_cloudops("playbook", "push", str(path), "--name", "nightly", env=env)
    assert (again.returncode, again.stdout) == (0, "nightly 2\n"), again.stderr

    listed = run_cloudops("playbook", "ls", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r["version"] for r in map(json.loads, listed.stdout.splitlines())}
    assert rows["nightly"] == 2 and rows["cleanup"] == 1
    shown = run_cloudops("playbook", "show", "nightly", "--version", "1", env=env)
    assert shown.returncode == 0 and shown.stdout.endswith("kept\n")
    assert "versions: 1, 2" in shown.stderr
    missing = run_cloudops("playbook", "show", "nightly", "--version", "5", env=env)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert "'nightly' version 5" in missing.stderr

    ran = run_cloudops("run", "--playbook-name", "nightly", "--param", "keep=7", env=env)
    assert (ran.returncode, ran.stdout) == (0, "7 left\n"), ran.stderr
    ran = run_cloudops(
        "run",
        "--json",
        "--playbook-name",
        "nightly",
        "--version",
        "1",
        "--param",
        "keep=3",
        env=env,
    )
    assert ran.returncode == 0, ran.stderr
    envelopes = [json.loads(line) for line in ran.stdout.splitlines()]
    with fleet.api() as api:
        record = api.get(f"/api/executions/{envelopes[0]['executionId']}").json()
    assert (record["playbookName"], record["playbookVersion"]) == ("nightly", 1)
    unknown = run_cloudops("run", "--playbook-name", "nope", env=env)
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1
    assert "playbookName: no saved playbook named 'nope'" in unknown.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: []\n")
    refused = run_cloudops("playbook", "push", str(bad), env=env)
    assert refused.returncode == 2 and refused.stderr.startswith("cloudops: error: playbook: ")


@pytest.fixture(scope="module")
def relay_without_db(fleet: Fleet) -> Iterator[RelayProcess]:
    relay = start_relay(
        fleet.settings,
        fleet.tmp / "relay-no-db.log",
        tokens=(TOKEN,),
        env={"RELAY_TEST_DISPATCHER": "celery"},
    )
    yield relay
    relay.stop()


def test_without_a_database_503_and_exit_2(fleet: Fleet, relay_without_db: RelayProcess) -> None:
    with relay_without_db.client(timeout=30.0) as api:
        for resp in (
            put_playbook(api, "x", V1),
            api.get("/api/playbooks"),
            api.get("/api/playbooks/x"),
            api.delete("/api/playbooks/x"),
            api.post("/api/executions", json={"playbookName": "x"}),
        ):
            assert (resp.status_code, resp.json()) == (503, {"detail": NO_DATABASE})
        # Everything else works as before.
        assert api.get("/api/executions").status_code == 200
    remote = _cli_env(fleet, relay_without_db.base_url)
    # The last: a fleet's CLI without a relay, nor a database.
    for env, args in (
        (remote, ("playbook", "ls")),
        (remote, ("run", "--playbook-name", "x")),
        (worker_env(fleet.settings), ("run", "--playbook-name", "x")),
    ):
        result = run_cloudops(*args, env=env)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr == f"cloudops: error: {NO_DATABASE}\n"


def test_embedded_push_then_run_by_name_in_another_process(tmp_path: Path) -> None:
    """No Redis, no database URL: the embedded SQLite file keeps saved playbooks too."""
    env = {**embedded_env(), "XDG_DATA_HOME": str(tmp_path)}
    path = tmp_path / "hello.yaml"
    path.write_text("name: hello\nsteps:\n  - command: echo hi {{ params.who }}\n")
    pushed = run_cloudops("playbook", "push", str(path), env=env)
    assert (pushed.returncode, pushed.stdout) == (0, "hello 1\n"), pushed.stderr
    ran = run_cloudops("run", "--playbook-name", "hello", "--param", "who=bob", env=env)
    assert (ran.returncode, ran.stdout) == (0, "hi bob\n"), ran.stderr
    listed = run_cloudops("ls", "--json", env=env)
    [record] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (record["playbookName"], record["playbookVersion"]) == ("hello", 1)
