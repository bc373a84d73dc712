"""The events' Redis down, or hung, while a real relay and a real worker use it (issue 18).

Events and records on a private redis-server (AOF on every write, so a restart keeps what it
acknowledged), the broker on RabbitMQ (a vhost of this module's own), so that only Redis
fails. While Redis is away every route that needs it is a 503 naming it within 10 s and
/healthz names it; the command already running goes on (its events wait in the worker's
buffer). When Redis is back, everything recovers by itself: the buffered events arrive, the
running command's output is complete, new work runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from events.settings import Settings
from tests.conftest import StartWorker
from tests.helpers import PrivateRedis
from tests.relay.helpers import RelayProcess, wait_for

pytestmark = pytest.mark.integration

DEADLINE_S = 10.0
REDIS_DOWN = {"detail": "the event store (Redis) is unavailable; retry later"}


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    if server.paused:
        server.resume()
    server.kill()


# Short, so that the outage outlasts every lease: a reaper must not declare the running command
# lost when Redis comes back (nobody could renew a lease meanwhile; worker/reaper.py).
LEASE_TTL_S = 2


@pytest.fixture
def settings(key_prefix: str, private_redis: PrivateRedis, rabbitmq_url: str) -> Settings:
    return Settings(
        redis_url=private_redis.url,
        key_prefix=key_prefix,
        broker_url=rabbitmq_url,
        lease_ttl_s=LEASE_TTL_S,
    )


def timed(call: Any) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    resp = call()
    return resp, time.monotonic() - t0


def ended(api: httpx.Client, execution_id: str) -> dict[str, Any] | None:
    record: dict[str, Any] = api.get(f"/api/executions/{execution_id}").json()
    return None if record.get("status") in ("queued", "running") else record


def test_redis_down_or_hung_is_a_503_naming_it_and_everything_recovers(
    private_redis: PrivateRedis, relay: RelayProcess, start_worker: StartWorker
) -> None:
    start_worker(hostname="steady@ha")
    body = {
        "command": "for i in 1 2 3 4 5 6; do echo line $i; sleep 1; done",
        "commandType": "script",
    }
    with relay.client(timeout=30) as api:
        resp = api.post("/api/executions", json=body)
        assert resp.status_code == 202, resp.text
        running = resp.json()["executionId"]
        wait_for(lambda: api.get(f"/api/executions/{running}").json()["status"] == "running", 20)

        for fault in ("down", "hung"):
            private_redis.kill() if fault == "down" else private_redis.pause()
            calls = {
                "submit": lambda: api.post("/api/executions", json=body),
                "list": lambda: api.get("/api/executions"),
                "record": lambda: api.get(f"/api/executions/{running}"),
                "cancel": lambda: api.post(f"/api/executions/{running}/cancel"),
            }
            for what, call in calls.items():
                resp, took_s = timed(call)
                assert resp.status_code == 503, (fault, what, resp.status_code, resp.text)
                assert resp.json() == REDIS_DOWN, (fault, what)
                assert took_s < DEADLINE_S, f"{fault} {what}: the 503 took {took_s:.1f} s"
            resp, took_s = timed(lambda: httpx.get(f"{relay.base_url}/healthz", timeout=15))
            assert resp.status_code == 503 and took_s < DEADLINE_S, (resp.text, took_s)
            assert resp.json()["unavailable"] == ["Redis"], resp.json()
            private_redis.start() if fault == "down" else private_redis.resume()
            wait_for(lambda: httpx.get(f"{relay.base_url}/healthz").status_code == 200, 30, 0.1)

        # The command that ran through both outages completed, with every line.
        wait_for(lambda: api.get(f"/api/executions/{running}").json()["status"] == "completed", 30)
        out = api.get(f"/api/executions/{running}/output").text
        assert out == "".join(f"line {i}\n" for i in range(1, 7))
        resp = api.post("/api/executions", json={"command": "echo after", "commandType": "script"})
        assert resp.status_code == 202, resp.text
        after = resp.json()["executionId"]
        wait_for(lambda: api.get(f"/api/executions/{after}").json()["status"] == "completed", 30)
    assert "Traceback" not in relay.logs()
