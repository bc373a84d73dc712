"""Every data route refuses a missing or wrong token; tickets only open streams; no token or
ticket ever reaches the relay's logs; static files, /healthz and OpenAPI need no token."""

from __future__ import annotations

import base64
import json

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.relay.conftest import StartRelay
from tests.relay.helpers import RelayProcess, wait_for
from tests.relay.test_rest import submit

pytestmark = pytest.mark.integration

DATA_ROUTES = [
    ("POST", "/api/executions"),
    ("GET", "/api/executions"),
    ("GET", "/api/executions/ex_x"),
    ("GET", "/api/executions/ex_x/output"),
    ("POST", "/api/executions/ex_x/cancel"),
    ("GET", "/api/executions/ex_x/events"),
    ("GET", "/api/events"),
    ("POST", "/api/stream-tickets"),
    ("GET", "/metrics"),
]


def bad_credentials(token: str) -> list[dict[str, str]]:
    basic = base64.b64encode(f"user:{token}".encode()).decode()
    return [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {token}x"},
        {"Authorization": f"Bearer {token[:-1]}"},
        {"Authorization": f"Basic {basic}"},
        {"Authorization": token},
        {"Authorization": "Bearer"},
    ]


def ws_refused(url: str, headers: dict[str, str] | None = None) -> int:
    with pytest.raises(InvalidStatus) as info:
        connect(url, additional_headers=headers, open_timeout=5)
    return int(info.value.response.status_code)


def test_every_data_route_refuses_missing_or_wrong_token(
    relay: RelayProcess, api: httpx.Client, token: str
) -> None:
    ex = submit(api, "lines=1")
    with httpx.Client(base_url=relay.base_url, timeout=5) as anon:
        for headers in bad_credentials(token):
            for method, path in [*DATA_ROUTES, ("GET", f"/api/executions/{ex}/events")]:
                resp = anon.request(method, path, headers=headers, json={})
                assert resp.status_code == 401, (method, path, headers)
                assert resp.headers["www-authenticate"] == "Bearer"
                assert set(resp.json()) == {"detail"}
                assert token not in resp.text
            assert ws_refused(relay.ws_url, headers) == 401
    for query in ("", "?token=wrong", f"?token={token}x", "?ticket=made-up", "?ticket="):
        assert ws_refused(relay.ws_url + query) == 401


def test_tickets_open_streams_only_and_expire(start: StartRelay, token: str) -> None:
    relay = start(env={"CLOUDOPS_STREAM_TICKET_TTL_S": "2"})
    with relay.client() as api:
        ex = submit(api, "lines=1")
        minted = api.post("/api/stream-tickets")
        assert minted.status_code == 201
        ticket = minted.json()["ticket"]
        assert minted.json()["expiresInS"] == 2
    with httpx.Client(base_url=relay.base_url, timeout=5) as anon:
        # Accepted by the SSE and WebSocket routes...
        resp = anon.get(f"/api/executions/{ex}/events", params={"ticket": ticket})
        assert resp.status_code == 200
        with connect(f"{relay.ws_url}?ticket={ticket}", open_timeout=5) as ws:
            ws.send(json.dumps({"subscribe": ex}))
            assert json.loads(ws.recv(timeout=5))["subscribed"] == ex
        # ...and nowhere else.
        for method, path in DATA_ROUTES:
            if path.endswith("/events"):
                continue
            resp = anon.request(method, path, params={"ticket": ticket}, json={})
            assert resp.status_code == 401, path
        # ?token= is for WebSocket only (browsers cannot set its headers).
        resp = anon.get(f"/api/executions/{ex}/events", params={"token": token})
        assert resp.status_code == 401

        def expired() -> bool:
            r = anon.get(f"/api/executions/{ex}/events", params={"ticket": ticket})
            return r.status_code == 401

        wait_for(expired, 10.0, 0.2, "the ticket to expire")
    assert ws_refused(f"{relay.ws_url}?ticket={ticket}") == 401


def test_no_token_configured_refuses_everything(start: StartRelay) -> None:
    relay = start(tokens=())
    with httpx.Client(base_url=relay.base_url, timeout=5) as anon:
        for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Bearer x"}):
            for method, path in DATA_ROUTES:
                resp = anon.request(method, path, headers=headers, json={})
                assert resp.status_code == 401
                assert "no API token configured" in resp.json()["detail"]
        assert anon.get("/healthz").status_code == 200
    assert ws_refused(relay.ws_url + "?token=") == 401
    relay.stop()
    assert relay.logs().count("CLOUDOPS_API_TOKENS is empty") == 1


def test_logs_hold_no_token_and_no_ticket(
    relay: RelayProcess, api: httpx.Client, token: str
) -> None:
    ex = submit(api, "lines=2")
    ticket = api.post("/api/stream-tickets").json()["ticket"]
    wrong = "wrong-" + token[::-1]
    with httpx.Client(base_url=relay.base_url, timeout=5) as anon:
        anon.get(f"/api/executions/{ex}/events", params={"ticket": ticket}).raise_for_status()
        anon.get(f"/api/executions/{ex}/events", params={"ticket": wrong})
        anon.get("/api/executions", params={"token": token, "access_token": token})
        anon.get("/api/executions", headers={"Authorization": f"Bearer {wrong}"})
        anon.get(f"/nowhere?token={token}&ticket={ticket}")
    for url in (f"{relay.ws_url}?token={token}", f"{relay.ws_url}?ticket={ticket}&x=1"):
        with connect(url, open_timeout=5) as ws:
            ws.send(json.dumps({"subscribe": ex}))
            ws.recv(timeout=5)
    ws_refused(f"{relay.ws_url}?token={wrong}")
    relay.stop()
    logs = relay.logs()
    assert "/api/executions/" in logs and "WebSocket /api/ws" in logs  # the log is real
    assert "ticket=***" in logs and "token=***" in logs  # the values were there, redacted
    for secret in (token, ticket, wrong, token[:12]):
        assert secret not in logs


def test_static_health_and_openapi_need_no_token(relay: RelayProcess) -> None:
    with httpx.Client(base_url=relay.base_url, timeout=5) as anon:
        page = anon.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        js = anon.get("/cloudops-events.js")
        assert js.status_code == 200
        assert js.headers["content-type"].startswith("text/javascript")
        assert "export function listen" in js.text
        assert anon.get("/healthz").json() == {"status": "ok"}
        spec = anon.get("/openapi.json").json()
        assert "/api/executions/{execution_id}/events" in spec["paths"]
        assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_cors_off_unless_configured(start: StartRelay) -> None:
    preflight = {
        "Origin": "https://console.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    off = start()
    resp = httpx.options(f"{off.base_url}/api/executions", headers=preflight)
    assert "access-control-allow-origin" not in resp.headers
    on = start(env={"CLOUDOPS_CORS_ORIGINS": "https://console.example"})
    resp = httpx.options(f"{on.base_url}/api/executions", headers=preflight)
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == "https://console.example"
    other = {**preflight, "Origin": "https://evil.example"}
    resp = httpx.options(f"{on.base_url}/api/executions", headers=other)
    assert "access-control-allow-origin" not in resp.headers
