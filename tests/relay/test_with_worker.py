"""The relay with the real CeleryDispatcher and a real `cloudops worker` process: submit over
REST, stream over SSE and WebSocket (equal to the history), cancel, and the dispatcher's own
422s naming the field."""

from __future__ import annotations

import json

import httpx
import pytest
import redis

from events.keys import Keys
from tests.conftest import StartWorker
from tests.helpers import wait_until
from tests.relay.conftest import StartRelay
from tests.relay.helpers import RelayProcess, history_json, output_of, sse_events
from tests.relay.test_rest import wait_status
from tests.relay.test_streams import ws_connect, ws_until_complete

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def celery_relay(start: StartRelay, start_worker: StartWorker) -> RelayProcess:
    start_worker()
    return start(env={"RELAY_TEST_DISPATCHER": "celery", "CLOUDOPS_SSE_PING_INTERVAL_S": "0.5"})


def submit(api: httpx.Client, body: dict[str, object]) -> str:
    resp = api.post("/api/executions", json=body)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["executionId"])


def test_script_streams_equal_history(
    celery_relay: RelayProcess, rclient: redis.Redis, keys: Keys
) -> None:
    script = "for i in $(seq 1 300); do echo line $i; echo err $i >&2; done"
    with celery_relay.client() as api:
        ex = submit(api, {"commandType": "script", "command": script, "options": {"timeout": 60}})
        with ws_connect(celery_relay) as ws:
            ws.send(json.dumps({"subscribe": ex, "after": 0}))
            assert json.loads(ws.recv(timeout=10))["subscribed"] == ex
            with api.stream("GET", f"/api/executions/{ex}/events") as stream:
                sse = [m.data for m in sse_events(stream.iter_lines())]
            ws_got = ws_until_complete(ws, ex)
        history = history_json(rclient, keys, ex)
        assert sse == history
        assert ws_got == history
        assert json.loads(history[0])["event"] == "execution_started"
        assert json.loads(history[-1])["payload"]["status"] == "completed"
        stdout = "".join(f"line {i}\n" for i in range(1, 301))
        envelopes = [json.loads(h) for h in history]
        outs = [e["payload"] for e in envelopes if e["event"] == "execution_output"]
        assert "".join(p["output"] for p in outs if p["stream"] == "stdout") == stdout
        text = api.get(f"/api/executions/{ex}/output").text
        assert text == output_of(history)
        record = wait_status(api, ex, "completed")
        assert record["exitCode"] == 0 and record["worker"] and record["options"] == {"timeout": 60}


def test_cancel_through_the_relay(celery_relay: RelayProcess) -> None:
    with celery_relay.client() as api:
        ex = submit(api, {"commandType": "script", "command": "echo started; sleep 60"})
        with api.stream("GET", f"/api/executions/{ex}/events") as stream:
            for m in sse_events(stream.iter_lines()):
                if m.event == "execution_output":
                    assert api.post(f"/api/executions/{ex}/cancel").status_code == 202
                if m.event == "execution_complete":
                    assert json.loads(m.data)["payload"]["status"] == "cancelled"
        record = wait_status(api, ex, "cancelled")
        assert record["status"] == "cancelled"
        # Who started and who cancelled it (CONTRACT §9): the first CLOUDOPS_API_TOKENS entry.
        assert (record["submittedBy"], record["cancelledBy"]) == ("env-1", "env-1")
        assert api.post(f"/api/executions/{ex}/cancel").status_code == 409
        assert api.post("/api/executions/ex_00000000000000000000/cancel").status_code == 404


def test_playbook_and_dispatcher_validation(celery_relay: RelayProcess) -> None:
    playbook = {
        "name": "two steps",
        "steps": [
            {"id": "a", "name": "First", "command": "echo {{ params.word }}"},
            {"id": "b", "name": "Second", "command": "echo done"},
        ],
    }
    with celery_relay.client() as api:
        ex = submit(
            api, {"commandType": "playbook", "playbook": playbook, "params": {"word": "hello"}}
        )
        with api.stream("GET", f"/api/executions/{ex}/events") as stream:
            names = [m.event for m in sse_events(stream.iter_lines())]
        assert names.count("playbook_step_start") == 2
        assert names.count("playbook_step_complete") == 2
        record = wait_status(api, ex, "completed")
        assert [s["stepId"] for s in record["steps"]] == ["a", "b"]
        assert api.get(f"/api/executions/{ex}/output").text.startswith("hello\n")

        resp = api.post("/api/executions", json={"commandType": "aws_cli", "command": "ls -l"})
        assert resp.status_code == 422
        assert resp.json()["detail"].startswith("command: ")
        bad = {"commandType": "playbook", "playbook": {"name": "x", "steps": [{"name": "no cmd"}]}}
        resp = api.post("/api/executions", json=bad)
        assert resp.status_code == 422
        # A bad playbook's detail lists every problem, FastAPI's shape (CONTRACT §5).
        assert resp.json()["detail"] == [
            {
                "loc": ["body", "playbook", "steps", 0, "command"],
                "msg": "<request>, step 1 (step_1), field command: is missing"
                " (every step needs `command`)",
            }
        ]


def _sample(text: str, name: str) -> float:
    lines = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    assert lines, f"no {name} in /metrics"
    return float(lines[0].split()[1])


def test_metrics_histograms_count_each_execution_once(celery_relay: RelayProcess) -> None:
    with celery_relay.client() as api:
        ids = [submit(api, {"commandType": "script", "command": f"echo {n}"}) for n in range(3)]
        failed = submit(api, {"commandType": "script", "command": "exit 3"})
        for ex in ids:
            wait_status(api, ex, "completed")
        wait_status(api, failed, "failed")
        live = submit(api, {"commandType": "script", "command": "sleep 0.3; echo late"})
        with api.stream("GET", f"/api/executions/{live}/events") as stream:
            list(sse_events(stream.iter_lines()))

        def counted() -> str:
            # Counted by the worker right after its execution_complete went out.
            text = api.get("/metrics").text
            return text if _sample(text, "cloudops_execution_queue_wait_seconds_count") >= 5 else ""

        text = wait_until(counted, 10, 0.05, "the last execution to be counted")
    assert _sample(text, "cloudops_execution_duration_seconds_count") == 5
    assert _sample(text, "cloudops_execution_queue_wait_seconds_count") == 5
    assert _sample(text, 'cloudops_execution_duration_seconds_bucket{le="+Inf"}') == 5
    assert _sample(text, "cloudops_execution_duration_seconds_sum") >= 0.3
    assert "# TYPE cloudops_relay_delivery_seconds histogram" in text
    # The late line and the end came live through the hub to this SSE client.
    assert _sample(text, "cloudops_relay_delivery_seconds_count") >= 1
