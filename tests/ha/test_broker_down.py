"""A broker that is down, or hung, while a real relay and a real worker use it (issue 18).

The broker (the machine's RabbitMQ, in a vhost of this module's own, or the shared Redis under
the test's prefix) is reached through a TCP proxy that the test cuts (connection refused, as a
stopped broker) and freezes (connections accepted, nothing answered: a hung one), so the shared
service itself is never touched. The events' Redis stays up. While the broker is away:
submitting is a 503 naming the broker within 10 s, never a 500 or a hang; /healthz names it;
a cancel still works (the cancel mark); the execution already running goes on and completes.
When the broker is back, everything recovers by itself: /healthz is 200 again and a new
execution runs on the same worker, which reconnected on its own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from events.settings import Settings
from tests.conftest import REDIS_URL, StartWorker
from tests.relay.helpers import RelayProcess, wait_for
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.brokers]

NAMES = {"redis": "Redis", "rabbitmq": "RabbitMQ"}
DEADLINE_S = 10.0


def through(proxy: TcpProxy, url: str) -> str:
    """`url` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth}@127.0.0.1:{proxy.port}" if auth else f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def proxy(broker: str, rabbitmq_url: str) -> Iterator[TcpProxy]:
    target = urlsplit(rabbitmq_url if broker == "rabbitmq" else REDIS_URL).port
    p = TcpProxy(target or 5672).up()
    yield p
    p.close()


@pytest.fixture
def settings(key_prefix: str, broker: str, rabbitmq_url: str, proxy: TcpProxy) -> Settings:
    """Events on the shared Redis, directly; the broker through the proxy."""
    broker_url = rabbitmq_url if broker == "rabbitmq" else REDIS_URL
    return Settings(
        redis_url=REDIS_URL,
        key_prefix=key_prefix,
        broker_url=through(proxy, broker_url),
        kill_grace_s=2.0,
    )


def submit(api: httpx.Client, command: str) -> tuple[httpx.Response, float]:
    t0 = time.monotonic()
    resp = api.post("/api/executions", json={"command": command, "commandType": "script"})
    return resp, time.monotonic() - t0


def status_of(api: httpx.Client, execution_id: str) -> str:
    return str(api.get(f"/api/executions/{execution_id}").json()["status"])


def health(relay: RelayProcess) -> tuple[int, dict[str, Any]]:
    resp = httpx.get(f"{relay.base_url}/healthz", timeout=15)
    return resp.status_code, resp.json()


def test_broker_down_or_hung_is_a_503_naming_it_and_everything_recovers(
    broker: str, proxy: TcpProxy, relay: RelayProcess, start_worker: StartWorker
) -> None:
    name = NAMES[broker]
    worker = start_worker(hostname="steady@ha")
    with relay.client(timeout=30) as api:
        resp, _ = submit(api, "sleep 4; echo survived")
        assert resp.status_code == 202, resp.text
        running = resp.json()["executionId"]
        resp, _ = submit(api, "sleep 300")
        victim = resp.json()["executionId"]
        wait_for(lambda: status_of(api, running) == status_of(api, victim) == "running", 20)

        for fault in ("down", "hung"):
            proxy.down() if fault == "down" else proxy.freeze()
            resp, took_s = submit(api, "echo never")
            assert resp.status_code == 503, (fault, resp.status_code, resp.text)
            assert resp.json() == {"detail": f"the broker ({name}) is unavailable; retry later"}
            assert took_s < DEADLINE_S, f"{fault}: the 503 took {took_s:.1f} s"
            code, body = health(relay)
            assert code == 503 and body["unavailable"] == [f"broker ({name})"], body
            assert body["detail"] == f"broker ({name}) does not answer"
            # The execution whose task could not be sent is not left queued forever.
            failed = api.get("/api/executions", params={"status": "failed"}).json()
            assert any("not queued" in (r.get("error") or "") for r in failed), failed
            proxy.up() if fault == "down" else proxy.thaw()

        # A cancel while the broker is away: the revoke cannot be broadcast, the mark wins.
        proxy.down()
        t0 = time.monotonic()
        resp = api.post(f"/api/executions/{victim}/cancel")
        assert resp.status_code == 202 and time.monotonic() - t0 < DEADLINE_S, resp.text
        wait_for(lambda: status_of(api, victim) == "cancelled", 20, what="the cancel")
        # What was running when the broker went away went on (its events are on Redis).
        wait_for(lambda: status_of(api, running) == "completed", 20, what="the running one")
        assert api.get(f"/api/executions/{running}/output").text == "survived\n"

        # Back: health recovers and new work runs, on the worker that reconnected by itself.
        proxy.up()
        wait_for(lambda: health(relay)[0] == 200, 30, 0.2, "/healthz to recover")
        resp, _ = submit(api, "echo after")
        assert resp.status_code == 202, resp.text
        after = resp.json()["executionId"]
        wait_for(lambda: status_of(api, after) == "completed", 60, 0.1, "work after the outage")
        assert api.get(f"/api/executions/{after}").json()["worker"] == "steady@ha"
        assert worker.proc.poll() is None
    assert "Traceback" not in relay.logs()
