"""The rerun route on the relay tests' scripted dispatcher (tests/relay/fake_dispatch.py), which
applies the same rule (events.rerun): a failed command again, a playbook whose steps all
succeeded refused for `failed` and rerun whole for `all`; the OpenAPI document names it."""

from __future__ import annotations

import httpx

from tests.relay.test_rest import submit, wait_status


def test_scripted_rerun(api: httpx.Client) -> None:
    failed = submit(api, "lines=1 exit=3")
    wait_status(api, failed, "failed")
    resp = api.post(f"/api/executions/{failed}/rerun", json={"hosts": "failed"})
    assert resp.status_code == 202, resp.text
    again = wait_status(api, resp.json()["executionId"], "failed")
    assert again["rerunOf"] == failed and again["command"] == "lines=1 exit=3"

    playbook = {"name": "ok", "steps": [{"id": "a", "command": "x"}, {"id": "b", "command": "y"}]}
    resp = api.post("/api/executions", json={"commandType": "playbook", "playbook": playbook})
    done = resp.json()["executionId"]
    wait_status(api, done, "completed")
    resp = api.post(f"/api/executions/{done}/rerun")
    assert resp.status_code == 409
    assert resp.json() == {"detail": "nothing to rerun: every step succeeded"}
    resp = api.post(f"/api/executions/{done}/rerun", json={"hosts": "all"})
    assert resp.status_code == 202, resp.text
    whole = wait_status(api, resp.json()["executionId"], "completed")
    assert [s["stepId"] for s in whole["steps"]] == ["a", "b"] and whole["rerunOf"] == done

    held = submit(api, "hold=1")
    resp = api.post(f"/api/executions/{held}/rerun", json={"hosts": "all"})
    assert resp.status_code == 409 and "still" in resp.json()["detail"]
    assert api.post(f"/api/executions/{held}/cancel").status_code == 202
    resp = api.post(f"/api/executions/{held}/rerun", json={"hosts": "every"})
    assert resp.status_code == 422 and resp.json()["detail"].startswith("hosts"), resp.text

    paths = api.get("/openapi.json").json()["paths"]
    assert "202" in paths["/api/executions/{execution_id}/rerun"]["post"]["responses"]
