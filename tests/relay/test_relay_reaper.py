"""The relay ends executions whose only worker is gone: nobody else is left to notice."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.conftest import StartWorker
from tests.helpers import live_pids_with, wait_until
from tests.relay.conftest import StartRelay

pytestmark = pytest.mark.integration


def test_relay_reaps_an_execution_whose_only_worker_died(
    start: StartRelay, start_worker: StartWorker
) -> None:
    worker = start_worker(hostname="lonely@test")
    relay = start(env={"RELAY_TEST_DISPATCHER": "celery", "CLOUDOPS_LEASE_TTL_S": "4"})
    marker = f"300.{uuid.uuid4().int % 10**8:08d}"
    with relay.client() as api:
        resp = api.post(
            "/api/executions", json={"commandType": "script", "command": f"sleep {marker}"}
        )
        assert resp.status_code == 202, resp.text
        ex = resp.json()["executionId"]
        wait_until(lambda: live_pids_with(marker), 15, what="the command to start")
        t0 = time.monotonic()
        worker.kill_tree()  # the whole worker, main and pool processes: no worker is left

        def ended() -> dict[str, object]:
            rec: dict[str, object] = api.get(f"/api/executions/{ex}").json()
            return rec if rec["status"] != "running" else {}

        rec = wait_until(ended, 20, 0.2, "the relay to end the execution")
        assert time.monotonic() - t0 < 15
        assert rec["status"] == "failed" and "worker lost" in str(rec["error"])
        with api.stream("GET", f"/api/executions/{ex}/events") as stream:
            names = [
                json.loads(line[5:])["event"]
                for line in stream.iter_lines()
                if line.startswith("data:")
            ]
        assert names == ["execution_started", "execution_complete"]
        wait_until(lambda: not live_pids_with(marker), 5, what="the command to die with it")
