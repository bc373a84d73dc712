"""REST routes of the relay against a real uvicorn process and a real Redis (fake dispatcher)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.relay.conftest import StartRelay
from tests.relay.fake_dispatch import output_lines
from tests.relay.helpers import RelayProcess, free_port, sse_events, wait_for

pytestmark = pytest.mark.integration


def submit(api: httpx.Client, command: str, **body: Any) -> str:
    resp = api.post("/api/executions", json={"command": command, "commandType": "script", **body})
    assert resp.status_code == 202, resp.text
    assert resp.headers["location"].endswith(resp.json()["executionId"])
    return str(resp.json()["executionId"])


def wait_status(api: httpx.Client, execution_id: str, status: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        record: dict[str, Any] = api.get(f"/api/executions/{execution_id}").json()
        return record if record["status"] == status else None

    result: dict[str, Any] = wait_for(done, 10.0, what=f"{execution_id} {status}")
    return result


def test_submit_then_record_output_and_list(api: httpx.Client) -> None:
    options = {"workingDir": "/tmp", "timeout": 30, "awsRegion": "eu-west-1"}
    first = submit(api, "lines=5 chunk=2", options=options)
    second = submit(api, "lines=2 exit=3")
    record = wait_status(api, first, "completed")
    assert record["executionId"] == first
    assert record["command"] == "lines=5 chunk=2"
    assert record["commandType"] == "script"
    assert record["options"] == options
    assert record["exitCode"] == 0
    assert record["worker"] == "fake"
    for name in ("queuedAt", "startedAt", "completedAt", "durationMs"):
        assert name in record
    # Absent values are left out, not null.
    assert "error" not in record and "steps" not in record
    assert None not in record.values()
    failed = wait_status(api, second, "failed")
    assert failed["exitCode"] == 3

    assert api.get(f"/api/executions/{first}/output").text == "".join(output_lines(5))
    out = api.get(f"/api/executions/{first}/output")
    assert out.headers["content-type"].startswith("text/plain")

    listed = api.get("/api/executions").json()
    assert [r["executionId"] for r in listed[:2]] == [second, first]  # newest first
    completed = api.get("/api/executions", params={"status": "completed"}).json()
    assert [r["executionId"] for r in completed] == [first]
    assert api.get("/api/executions", params={"limit": 1}).json()[0]["executionId"] == (second)


def test_playbook_as_yaml_text_and_as_object(api: httpx.Client) -> None:
    text = "name: Inventory\nsteps:\n  - name: List\n    command: echo a\n  - command: echo b\n"
    resp = api.post("/api/executions", json={"commandType": "playbook", "playbook": text})
    assert resp.status_code == 202, resp.text
    record = wait_status(api, resp.json()["executionId"], "completed")
    assert record["commandType"] == "playbook"
    steps = record["steps"]
    assert [s["stepId"] for s in steps] == ["step_1", "step_2"]
    assert [s["stepName"] for s in steps] == ["List", "step_2"]
    assert all(s["status"] == "completed" and s["exitCode"] == 0 for s in steps)

    obj = {"steps": [{"id": "only", "command": "echo {{ params.x }}"}]}
    resp = api.post(
        "/api/executions",
        json={"commandType": "playbook", "playbook": obj, "params": {"x": 1, "y": True}},
    )
    assert resp.status_code == 202, resp.text


def test_cancel_running_then_conflict_then_unknown(api: httpx.Client) -> None:
    ex = submit(api, "lines=2 hold=1")
    wait_status(api, ex, "running")
    resp = api.post(f"/api/executions/{ex}/cancel")
    assert resp.status_code == 202
    assert resp.json() == {"executionId": ex, "cancelRequested": True}
    with api.stream("GET", f"/api/executions/{ex}/events") as stream:
        names = [m.event for m in sse_events(stream.iter_lines())]
    assert names[-2:] == ["execution_cancelled", "execution_complete"]
    assert wait_status(api, ex, "cancelled")["status"] == "cancelled"
    again = api.post(f"/api/executions/{ex}/cancel")
    assert again.status_code == 409
    assert "already ended" in again.json()["detail"]
    assert api.post("/api/executions/ex_nope/cancel").status_code == 404


def test_unknown_execution_is_404_everywhere(api: httpx.Client) -> None:
    for path in ("", "/output", "/events"):
        resp = api.get(f"/api/executions/ex_unknown{path}")
        assert resp.status_code == 404, path
        assert resp.json() == {"detail": "unknown execution: ex_unknown"}


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"commandType": "script"}, "command: is required"),
        ({"commandType": "aws_cli", "command": " \t"}, "command: must not be blank"),
        ({"command": "x"}, "commandType: is required"),
        (
            {"command": "x", "commandType": "shell"},
            "commandType: must be one of 'aws_cli', 'script', 'playbook'",
        ),
        (
            {"command": "x", "commandType": "script", "options": {"timeout": 0}},
            "options.timeout: must be a positive integer",
        ),
        (
            {"command": "x", "commandType": "script", "options": {"timeout": "10"}},
            "options.timeout: must be an integer",
        ),
        # Past a week; and past 64 bits, which once reached the record and made the list a 500.
        (
            {"command": "x", "commandType": "script", "options": {"timeout": 604801}},
            "options.timeout: must be at most 604800",
        ),
        (
            {"command": "x", "commandType": "script", "options": {"timeout": 2**70}},
            "options.timeout: must be at most 604800",
        ),
        (
            {"command": "x", "commandType": "script", "options": {"workDir": "/"}},
            "options.workDir: unknown field",
        ),
        (
            {"command": "x", "commandType": "script", "options": []},
            "options: must be a JSON object",
        ),
        ({"command": 5, "commandType": "script"}, "command: must be a string"),
        ({"commandType": "playbook"}, "playbook: is required"),
        ({"commandType": 5}, "commandType: must be one of 'aws_cli', 'script', 'playbook'"),
        ({"commandType": "playbook", "playbook": 7}, "playbook: must be YAML text or an object"),
        (
            {"commandType": "playbook", "playbook": "steps: []"},
            "playbook.steps: <request>: must be a non-empty list",
        ),
        (
            {"commandType": "playbook", "playbook": {"steps": [{}]}, "params": {"a": [1]}},
            "params.a: must be a string, number or boolean",
        ),
        (
            {"commandType": "script", "command": "x", "playbook": "steps: []"},
            "playbook: unknown field",
        ),
        (
            {"commandType": "playbook", "playbook": "steps: []", "options": {}},
            "options: unknown field",
        ),
        ([1, 2], "body: must be a JSON object"),
    ],
)
def test_bad_input_is_422_naming_the_field(api: httpx.Client, body: Any, detail: str) -> None:
    resp = api.post("/api/executions", json=body)
    assert resp.status_code == 422
    assert resp.json() == {"detail": detail}


def test_bad_query_and_json_are_422_naming_the_field(api: httpx.Client) -> None:
    resp = api.post(
        "/api/executions", content=b'{"command": ', headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422
    assert resp.json() == {"detail": "body: invalid JSON"}
    resp = api.get("/api/executions", params={"status": "done"})
    assert resp.status_code == 422
    assert resp.json()["detail"].startswith("status: must be one of 'queued'")
    assert api.get("/api/executions", params={"limit": 0}).json() == {
        "detail": "limit: must be at least 1"
    }
    ex = submit(api, "lines=1")
    resp = api.get(f"/api/executions/{ex}/events", headers={"Last-Event-ID": "x"})
    assert resp.json() == {"detail": "Last-Event-ID: must be a non-negative integer"}
    assert api.get(f"/api/executions/{ex}/events", params={"after": -1}).json() == {
        "detail": "after: must be at least 0"
    }


def test_metrics(relay: RelayProcess, api: httpx.Client) -> None:
    ex = submit(api, "lines=3")
    wait_status(api, ex, "completed")
    held = submit(api, "hold=1")
    wait_status(api, held, "running")
    with api.stream("GET", f"/api/executions/{held}/events") as stream:
        lines = stream.iter_lines()
        while not next(lines).startswith("retry:"):
            pass
        text = api.get("/metrics").text
        api.post(f"/api/executions/{held}/cancel")
        list(lines)
    assert 'cloudops_executions{status="completed"} 1' in text
    assert 'cloudops_executions{status="running"} 1' in text
    assert 'cloudops_connected_clients{kind="sse"} 1' in text
    assert 'cloudops_connected_clients{kind="ws"} 0' in text
    assert "cloudops_clients_dropped_total 0" in text
    assert "cloudops_running_executions 0" in text  # the fake dispatcher claims nothing
    published = [ln for ln in text.splitlines() if ln.startswith("cloudops_events_published")]
    assert float(published[0].split()[1]) >= 5
    assert "# TYPE cloudops_events_published_total counter" in text


def test_healthz_answers_503_without_redis(start: StartRelay, settings: Any) -> None:
    dead = settings.with_(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    relay = start_relay_with(start, dead)
    resp = httpx.get(f"{relay.base_url}/healthz")
    assert resp.status_code == 503
    assert resp.json() == {
        "status": "unavailable",
        "detail": "Redis does not answer",
        "unavailable": ["Redis"],
    }


def start_relay_with(start: StartRelay, settings: Any) -> RelayProcess:
    return start(
        env={"CLOUDOPS_REDIS_URL": settings.redis_url},
        ready_status=(200, 503),
    )
