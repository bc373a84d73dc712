"""`cloudops relay --embedded`: the whole product with no Redis server and no worker."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.helpers import (
    cloudops_argv,
    embedded_env,
    free_port,
    http_status,
    start_process,
    wait_until,
)


@pytest.mark.integration
def test_embedded_relay_runs_commands_and_serves_the_console(tmp_path: Path) -> None:
    port = free_port()
    env = embedded_env()  # no CLOUDOPS_REDIS_URL: nothing of ours talks to a Redis server
    env["CLOUDOPS_API_TOKENS"] = "embedded-token-1"
    env["HOME"] = str(tmp_path)
    relay = start_process(
        cloudops_argv("relay", "--embedded", "--port", str(port)),
        env,
        tmp_path / "relay.log",
        "relay",
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_status(f"{base}/healthz", 2) == 200, 30, 0.1, "the embedded relay")
        auth = {"Authorization": "Bearer embedded-token-1"}
        assert httpx.get(f"{base}/api/executions", timeout=5).status_code == 401
        resp = httpx.post(
            f"{base}/api/executions",
            json={"command": "echo one; echo two >&2; exit 3", "commandType": "script"},
            headers=auth,
            timeout=10,
        )
        assert resp.status_code == 202
        ex = resp.json()["executionId"]
        events = []
        with httpx.stream(
            "GET", f"{base}/api/executions/{ex}/events", headers=auth, timeout=30
        ) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    events.append(json.loads(line[5:]))
        assert [e["event"] for e in events] == [
            "execution_started",
            "execution_output",
            "execution_output",
            "execution_complete",
        ]
        assert [e["id"] for e in events] == [1, 2, 3, 4]
        assert events[-1]["payload"]["status"] == "failed"
        assert events[-1]["payload"]["exitCode"] == 3
        record = httpx.get(f"{base}/api/executions/{ex}", headers=auth, timeout=5).json()
        assert record["status"] == "failed" and record["worker"].startswith("embedded@")
        # The host registry holds the one in-process worker, the record's `worker`.
        (host,) = httpx.get(f"{base}/api/workers", headers=auth, timeout=5).json()
        assert host["hostname"] == record["worker"] and host["online"] is True
        output = httpx.get(f"{base}/api/executions/{ex}/output", headers=auth, timeout=5)
        assert output.text == "one\ntwo\n"
        page = httpx.get(f"{base}/", timeout=5)
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert "embedded-token-1" not in relay.log()

        # Big output takes the publisher's MULTI/EXEC path, here against fakeredis over TCP.
        resp = httpx.post(
            f"{base}/api/executions",
            json={"command": "seq 200000", "commandType": "script"},
            headers=auth,
            timeout=10,
        )
        big = resp.json()["executionId"]

        def ended() -> bool:
            rec = httpx.get(f"{base}/api/executions/{big}", headers=auth, timeout=5).json()
            return rec["status"] not in ("queued", "running")

        wait_until(ended, 60, 0.1, "seq 200000 to end")
        output = httpx.get(f"{base}/api/executions/{big}/output", headers=auth, timeout=30)
        assert output.text == "".join(f"{i}\n" for i in range(1, 200001))
        # Nothing had to be retried on the way (the scripts are loaded up front).
        assert "Redis unreachable" not in relay.log()
    finally:
        relay.stop(timeout_s=5)
