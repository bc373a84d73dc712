"""Who may call what (issue 16 item 2), generated from the relay's own route table.

Every route of the app (`app.routes`, REST, SSE, WebSocket, /metrics, the console's files) must
have a rule in api.access.RULES (a new route without one fails here), the rule must be what
CONTRACT §9 says of that kind of route, and a real relay must answer each credential (none, a
bad one, a viewer, an operator, an admin) with exactly that: 401 without a valid token, 403
naming the role it lacks, and otherwise whatever the route does (never 401 or 403)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.routing import APIRoute, APIWebSocketRoute, iter_route_contexts
from starlette.routing import Mount, Route, WebSocketRoute
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from api.access import PUBLIC, RULES, rule_key
from api.app import create_app
from events.db.schema import api_tokens
from events.settings import Settings
from events.vocabulary import Role
from tests.db.pg import empty_tables
from tests.relay.fake_dispatch import FakeDispatcher
from tests.relay.helpers import RelayProcess, start_relay

pytestmark = pytest.mark.integration

ADMIN_ENV = "tok-admin-" + os.urandom(8).hex()
ROLES = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)


def route_keys(settings: Settings) -> list[str]:
    """Every "METHOD path" the relay serves, from its own route table."""
    app = create_app(settings, FakeDispatcher(settings))
    keys: list[str] = []
    # FastAPI keeps included routers as such in app.routes; this walks them to their routes.
    for ctx in iter_route_contexts(app.routes):
        route, path = ctx.original_route, str(ctx.path)
        if isinstance(route, APIWebSocketRoute | WebSocketRoute):
            keys.append(rule_key("WEBSOCKET", path))
        elif isinstance(route, APIRoute | Route):
            keys += [rule_key(m, path) for m in sorted(ctx.methods or ()) if m != "HEAD"]
        elif isinstance(route, Mount):
            keys.append(rule_key("GET", path))
        else:  # a kind of route this test does not know yet
            raise AssertionError(f"unknown route kind {route!r}")
    return keys


def contract_role(key: str) -> Role | None:
    """CONTRACT §9 stated apart from the table: what each kind of route needs."""
    method, path = key.split(" ", 1)
    if not path.startswith(("/api", "/metrics")):
        return PUBLIC  # the console's files, /healthz, /openapi.json: no data
    if path.startswith(("/api/tokens", "/api/audit")) or method == "DELETE":
        return Role.ADMIN
    if method in ("GET", "WEBSOCKET") or path == "/api/stream-tickets":
        return Role.VIEWER  # reading, streaming (a ticket only opens a stream)
    return Role.OPERATOR  # start, cancel, rerun, save


def test_every_route_has_the_rule_the_contract_gives(settings: Settings) -> None:
    keys = route_keys(settings)
    missing = [k for k in keys if k not in RULES]
    assert not missing, f"routes without an access rule in api.access.RULES: {missing}"
    stale = sorted(set(RULES) - set(keys))
    assert not stale, f"rules of routes that do not exist: {stale}"
    wrong = {k: (RULES[k], contract_role(k)) for k in keys if RULES[k] != contract_role(k)}
    assert not wrong, wrong


@pytest.fixture
def relay(settings: Settings, tmp_path: Path, pg_url: str) -> Iterator[RelayProcess]:
    empty_tables(pg_url, api_tokens)
    env = {"CLOUDOPS_DATABASE_URL": pg_url}
    r = start_relay(settings, tmp_path / "relay.log", tokens=(ADMIN_ENV,), env=env)
    yield r
    r.stop()


def _concrete(path: str) -> str:
    for name, value in (("execution_id", "ex_nope"), ("name", "nope"), ("schedule_id", "sc_no")):
        path = path.replace("{" + name + "}", value)
    return path


def _call(relay: RelayProcess, key: str, token: str | None) -> tuple[int, str]:
    """The status and detail a credential gets from a route (a stream's first byte only)."""
    method, path = key.split(" ", 1)
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    if method == "WEBSOCKET":
        url = relay.base_url.replace("http", "ws", 1) + path
        try:
            with connect(url, additional_headers=headers, open_timeout=10):
                return 101, ""
        except InvalidStatus as e:
            return e.response.status_code, e.response.body.decode() if e.response.body else ""
    kwargs: dict[str, object] = {"headers": headers}
    if method in ("POST", "PUT"):
        kwargs["json"] = {}
    with (
        httpx.Client(base_url=relay.base_url, timeout=10) as http,
        http.stream(method, _concrete(path), **kwargs) as resp,  # type: ignore[arg-type]
    ):
        detail = "" if resp.status_code < 400 else resp.read().decode()
        return resp.status_code, detail


def test_each_role_gets_exactly_the_codes_of_its_rule(
    relay: RelayProcess, settings: Settings
) -> None:
    secrets: dict[Role, str] = {}
    with relay.client() as api:
        for role in ROLES:
            resp = api.post("/api/tokens", json={"name": f"as-{role}", "role": str(role)})
            assert resp.status_code == 201, resp.text
            secrets[role] = resp.json()["secret"]
    checked = 0
    for key in route_keys(settings):
        need = RULES[key]
        if need is PUBLIC:
            status, _ = _call(relay, key, None)
            assert status not in (401, 403), (key, status)
            continue
        for token in (None, "cot_not-a-token"):
            status, detail = _call(relay, key, token)
            assert status == 401, (key, token, status, detail)
        for role, secret in secrets.items():
            status, detail = _call(relay, key, secret)
            if role.includes(need):
                assert status not in (401, 403), (key, role, status, detail)
            else:
                assert status == 403, (key, role, status, detail)
                assert f"needs the {need} role" in detail, (key, role, detail)
            checked += 1
    assert checked >= 3 * 20  # every route of the relay, by three roles
