"""Fan-out steps through the relay with real workers: the record's hosts, the output filtered
by host and step, what a client written to the seed spec sees, and bad targets refused."""

from __future__ import annotations

import json

import pytest

from events.models import SPEC_EVENT_TYPES
from tests.conftest import StartWorker
from tests.helpers import wait_until
from tests.relay.conftest import StartRelay
from tests.relay.helpers import sse_events
from tests.relay.test_rest import wait_status
from tests.relay.test_with_worker import submit

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_fan_out_record_output_filters_and_a_seed_client(
    start: StartRelay, start_worker: StartWorker
) -> None:
    for n in (1, 2):
        start_worker(hostname=f"w{n}@t", queues="web", concurrency=1, env={"MARK": f"w{n}"})
    relay = start(env={"RELAY_TEST_DISPATCHER": "celery"})
    playbook = {
        "name": "fleet",
        "steps": [
            {"id": "a", "command": "echo a $MARK", "targets": {"queue": "web"}},
            {"id": "b", "command": "echo b $MARK", "targets": {"hosts": ["w2@t"]}},
        ],
    }
    with relay.client() as api:
        wait_until(
            lambda: sum(h["online"] for h in api.get("/api/workers").json()) == 2,
            30,
            what="both workers online",
        )
        ex = submit(api, {"commandType": "playbook", "playbook": playbook})
        with api.stream("GET", f"/api/executions/{ex}/events") as stream:
            seen = list(sse_events(stream.iter_lines()))
        record = wait_status(api, ex, "completed")
        hosts_a = record["steps"][0]["hosts"]
        assert [(h["host"], h["status"], h["exitCode"]) for h in hosts_a] == [
            ("w1@t", "completed", 0),
            ("w2@t", "completed", 0),
        ]
        assert all(h["durationMs"] >= 0 for h in hosts_a)
        assert [h["host"] for h in record["steps"][1]["hosts"]] == ["w2@t"]
        out = f"/api/executions/{ex}/output"
        assert api.get(out, params={"host": "w1@t"}).text == "a w1\n"
        assert api.get(out, params={"host": "w2@t", "step": "b"}).text == "b w2\n"
        assert sorted(api.get(out, params={"step": "a"}).text.splitlines()) == ["a w1", "a w2"]
        assert api.get(out, params={"host": "nobody"}).text == ""
        # Ad hoc: a command with `targets` runs as a one-step playbook.
        adhoc = submit(
            api,
            {
                "commandType": "script",
                "command": "echo adhoc $MARK",
                "options": {"timeout": 30},
                "targets": {"hosts": ["w1@t", "w2@t"]},
            },
        )
        record = wait_status(api, adhoc, "completed")
        assert record["commandType"] == "playbook"
        assert [h["host"] for h in record["steps"][0]["hosts"]] == ["w1@t", "w2@t"]
        text = api.get(f"/api/executions/{adhoc}/output").text
        assert sorted(text.splitlines()) == ["adhoc w1", "adhoc w2"]
    # A client of the seed spec handles its six events only: each step starts and ends once.
    spec_events = [json.loads(m.data) for m in seen if m.event in SPEC_EVENT_TYPES]
    steps = [
        (e["event"], e["payload"]["stepId"])
        for e in spec_events
        if "stepId" in e["payload"] and e["event"].startswith("playbook_step")
    ]
    assert steps == [
        ("playbook_step_start", "a"),
        ("playbook_step_complete", "a"),
        ("playbook_step_start", "b"),
        ("playbook_step_complete", "b"),
    ]
    assert [m.event for m in seen].count("playbook_host_complete") == 3
    assert [m.id for m in seen] == list(range(1, len(seen) + 1))


def test_bad_targets_are_422_naming_the_field(start: StartRelay) -> None:
    relay = start(env={"RELAY_TEST_DISPATCHER": "celery"})
    step: dict[str, object] = {"id": "a", "command": "true"}
    with relay.client() as api:
        cases: list[tuple[dict[str, object], str]] = [
            ({"targets": {"hosts": ["a@x"], "labels": {"k": "v"}}}, "field targets"),
            ({"targets": {"hots": ["a@x"]}}, "field targets.hots"),
            ({"targets": {"queue": "web"}, "parallel": 0}, "field parallel"),
            ({"targets": {"queue": "web"}, "max_failures": -1}, "field max_failures"),
        ]
        resp = api.post(
            "/api/executions",
            json={"commandType": "script", "command": "true", "targets": {"queue": "a b"}},
        )
        assert resp.status_code == 422 and "targets.queue" in resp.text, resp.text
        resp = api.post(
            "/api/executions", json={"commandType": "script", "command": "true", "targets": [1]}
        )
        assert resp.status_code == 422 and "targets" in resp.text, resp.text
        for extra, says in cases:
            body = {"commandType": "playbook", "playbook": {"name": "x", "steps": [step | extra]}}
            resp = api.post("/api/executions", json=body)
            assert resp.status_code == 422, resp.text
            assert says in json.dumps(resp.json()["detail"]), resp.text
