"""Rerun of what failed (CONTRACT §7) through the relay on three real workers: a fan-out step
where exactly one host fails, rerun on that host alone and then the later steps; `all` on every
host; and the refusals (still running: 409, nothing failed: 409, unknown: 404, bad body: 422)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import StartWorker
from tests.helpers import wait_until
from tests.relay.conftest import StartRelay
from tests.relay.helpers import sse_events
from tests.relay.test_rest import wait_status
from tests.relay.test_with_worker import submit

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOSTS = ["w1@t", "w2@t", "w3@t"]


def fleet_playbook(flag: Path) -> dict[str, Any]:
    # w2 fails the fan-out step while the flag file exists: the test removes it to mend w2.
    fails_on_w2 = f'echo fan $MARK; if [ "$MARK" = w2 ] && [ -e {flag} ]; then exit 7; fi'
    return {
        "name": "rerun-fleet",
        "steps": [
            {"id": "pre", "command": "echo pre $MARK", "queue": "web"},
            {"id": "fan", "command": fails_on_w2, "targets": {"queue": "web"}},
            {"id": "after", "command": "echo after $MARK", "queue": "web"},
        ],
    }


def rerun(api: httpx.Client, ex: str, body: dict[str, Any] | None) -> httpx.Response:
    return api.post(f"/api/executions/{ex}/rerun", json=body)


def events_of(api: httpx.Client, ex: str) -> list[dict[str, Any]]:
    with api.stream("GET", f"/api/executions/{ex}/events") as stream:
        return [json.loads(m.data) for m in sse_events(stream.iter_lines())]


def host_runs(events: list[dict[str, Any]], step_id: str) -> list[tuple[str, str]]:
    return sorted(
        (e["payload"]["host"], e["payload"]["status"])
        for e in events
        if e["event"] == "playbook_host_complete" and e["payload"]["stepId"] == step_id
    )


def test_rerun_of_a_fan_out_step_on_its_failed_host_then_the_later_steps(
    start: StartRelay, start_worker: StartWorker, tmp_path: Path
) -> None:
    for n in (1, 2, 3):
        start_worker(hostname=f"w{n}@t", queues="web", concurrency=1, env={"MARK": f"w{n}"})
    relay = start(env={"RELAY_TEST_DISPATCHER": "celery"})
    flag = tmp_path / "w2-fails"
    flag.touch()
    with relay.client() as api:
        wait_until(
            lambda: sum(h["online"] for h in api.get("/api/workers").json()) == 3,
            30,
            what="three workers online",
        )
        ex = submit(api, {"commandType": "playbook", "playbook": fleet_playbook(flag)})
        assert host_runs(events_of(api, ex), "fan") == [
            ("w1@t", "completed"),
            ("w2@t", "failed"),
            ("w3@t", "completed"),
        ]
        old = wait_status(api, ex, "failed")
        assert [s["status"] for s in old["steps"]] == ["completed", "failed", "pending"]
        assert "rerunOf" not in old

        flag.unlink()  # w2 mended
        resp = rerun(api, ex, {"hosts": "failed"})
        assert resp.status_code == 202, resp.text
        new = resp.json()["executionId"]
        assert new != ex and resp.headers["location"] == f"/api/executions/{new}"
        events = events_of(api, new)
        record = wait_status(api, new, "completed")
        assert record["rerunOf"] == ex and record["command"] == "rerun-fleet"
        assert record["submittedBy"] == "env-1"  # who asked for the rerun (CONTRACT §9)
        # The remaining steps, numbered from 1, with their ids; the fan-out step on w2 alone.
        assert [s["stepId"] for s in record["steps"]] == ["fan", "after"]
        assert [(h["host"], h["status"]) for h in record["steps"][0]["hosts"]] == [
            ("w2@t", "completed")
        ]
        starts = [e["payload"] for e in events if e["event"] == "playbook_step_start"]
        assert [(p["stepId"], p["stepNumber"], p["totalSteps"]) for p in starts] == [
            ("fan", 1, 2),
            ("after", 2, 2),
        ]
        assert starts[0]["hosts"] == ["w2@t"]
        assert host_runs(events, "fan") == [("w2@t", "completed")]
        text = api.get(f"/api/executions/{new}/output").text.splitlines()
        assert text[0] == "fan w2" and text[1].startswith("after w") and len(text) == 2
        assert [e["id"] for e in events] == list(range(1, len(events) + 1))

        # Everything of the rerun succeeded: nothing to rerun, unless all.
        resp = rerun(api, new, {"hosts": "failed"})
        assert resp.status_code == 409 and "nothing to rerun" in resp.json()["detail"]
        # `all` on the old one: the fan-out step resolves its targets again, every host.
        resp = rerun(api, ex, {"hosts": "all"})
        assert resp.status_code == 202, resp.text
        again = resp.json()["executionId"]
        assert host_runs(events_of(api, again), "fan") == [(h, "completed") for h in HOSTS]
        assert wait_status(api, again, "completed")["rerunOf"] == ex


def test_rerun_refusals_and_a_command(
    start: StartRelay, start_worker: StartWorker, tmp_path: Path
) -> None:
    start_worker()
    relay = start(env={"RELAY_TEST_DISPATCHER": "celery"})
    flag = tmp_path / "fails"
    flag.touch()
    with relay.client() as api:
        running = submit(api, {"commandType": "script", "command": "echo up; sleep 60"})
        wait_status(api, running, "running")
        resp = rerun(api, running, None)
        assert resp.status_code == 409 and "still running" in resp.json()["detail"]
        assert api.post(f"/api/executions/{running}/cancel").status_code == 202
        assert rerun(api, "ex_00000000000000000000", {}).status_code == 404
        for bad in ({"hosts": "some"}, {"hosts": 1}, {"host": "failed"}):
            resp = rerun(api, running, bad)
            assert resp.status_code == 422, bad
            assert resp.json()["detail"].split(":")[0] in ("hosts", "host"), resp.text

        # A command reruns as a whole, with its options; the empty body means "failed".
        command = f"test ! -e {flag} && pwd"
        body: dict[str, object] = {"commandType": "script", "command": command}
        body["options"] = {"workingDir": "/tmp"}
        ex = submit(api, body)
        wait_status(api, ex, "failed")
        flag.unlink()
        resp = api.post(f"/api/executions/{ex}/rerun")
        assert resp.status_code == 202, resp.text
        new = resp.json()["executionId"]
        record = wait_status(api, new, "completed")
        assert record["rerunOf"] == ex and record["command"] == command
        assert record["options"] == {"workingDir": "/tmp"}
        assert api.get(f"/api/executions/{new}/output").text == "/tmp\n"
