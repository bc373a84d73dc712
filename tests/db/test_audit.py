"""The audit log (issue 16 item 4) on a real relay and a real PostgreSQL database: an entry for
each start, cancel, rerun, token create and revoke, and for refused requests (401, 403, on REST
and WebSocket), with the right actor, action, target, outcome and client address; filters and
the cursor work (`GET /api/audit`, `cloudops audit`); only admins read it; the execution
retention does not prune it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from events.db.engine import make_engine
from events.db.retention import prune
from events.db.schema import api_tokens, audit_log
from events.settings import Settings
from tests.db.pg import empty_tables
from tests.helpers import run_cloudops, venv_path_env, wait_until
from tests.relay.helpers import RelayProcess, start_relay
from tests.relay.test_rest import submit, wait_status

pytestmark = pytest.mark.integration

ADMIN = "tok-audit-" + os.urandom(8).hex()


@pytest.fixture
def relay(settings: Settings, tmp_path: Path, pg_url: str) -> Iterator[RelayProcess]:
    empty_tables(pg_url, api_tokens, audit_log)
    env = {"CLOUDOPS_DATABASE_URL": pg_url}
    r = start_relay(settings, tmp_path / "relay.log", tokens=(ADMIN,), env=env)
    yield r
    r.stop()


def _entries(api: httpx.Client, **params: Any) -> list[dict[str, Any]]:
    resp = api.get("/api/audit", params=params)
    assert resp.status_code == 200, resp.text
    rows: list[dict[str, Any]] = resp.json()
    return rows


def _has(api: httpx.Client, **want: Any) -> dict[str, Any] | None:
    for e in _entries(api, limit=1000):
        if all(e[k] == v for k, v in want.items()):
            return e
    return None


def test_actions_and_refusals_are_recorded_and_filtered(
    relay: RelayProcess, pg_url: str, settings: Settings
) -> None:
    with relay.client() as admin:
        secrets = {}
        for name, role in (("op", "operator"), ("watcher", "viewer"), ("gone", "viewer")):
            resp = admin.post("/api/tokens", json={"name": name, "role": role})
            secrets[name] = resp.json()["secret"]
        assert admin.delete("/api/tokens/gone").status_code == 204
        op = relay.client(headers={"Authorization": f"Bearer {secrets['op']}"})
        watcher = relay.client(headers={"Authorization": f"Bearer {secrets['watcher']}"})
        with op, watcher:
            started = submit(op, "lines=1 hold=30")
            assert op.post(f"/api/executions/{started}/cancel").status_code == 202
            wait_status(op, started, "cancelled")
            rerun = op.post(f"/api/executions/{started}/rerun", json={"hosts": "all"})
            assert rerun.status_code == 202, rerun.text
            body = {"commandType": "script", "command": "x"}
            assert watcher.post("/api/executions", json=body).status_code == 403
            assert watcher.get("/api/audit").status_code == 403
        assert httpx.get(relay.base_url + "/api/executions").status_code == 401
        with pytest.raises(InvalidStatus):
            connect(relay.ws_url + "?token=nope", open_timeout=10).close()

        expected = [
            {"actor": "env-1", "action": "token.create", "target": "op", "outcome": "ok"},
            {"actor": "env-1", "action": "token.revoke", "target": "gone", "outcome": "ok"},
            {"actor": "op", "action": "start", "target": started, "outcome": "ok"},
            {"actor": "op", "action": "cancel", "target": started, "outcome": "ok"},
            {"actor": "op", "action": "rerun", "target": started, "outcome": "ok"},
            {"actor": "watcher", "action": "start", "outcome": "denied", "status": 403},
            {"actor": "watcher", "action": "GET /api/audit", "outcome": "denied"},
            {"actor": "anonymous", "action": "GET /api/executions", "status": 401},
            {"actor": "anonymous", "action": "WEBSOCKET /api/ws", "outcome": "unauthenticated"},
        ]
        for want in expected:
            wait_until(lambda w=want: _has(admin, **w), timeout_s=10, what=str(want))  # type: ignore[misc]
        entry = _has(admin, action="start", actor="op")
        assert entry is not None and entry["client"] == "127.0.0.1" and entry["status"] == 202
        # Reads that went through are not actions: nothing recorded for them.
        assert _has(admin, action="GET /api/executions", actor="op") is None

        # Filters and the cursor: every entry once, newest first.
        only_op = _entries(admin, actor="op")
        assert {e["action"] for e in only_op} == {"start", "cancel", "rerun"}
        assert {e["actor"] for e in _entries(admin, action="start")} == {"op", "watcher"}
        assert _entries(admin, since="2999-01-01T00:00:00Z") == []
        paged, cursor = [], None
        while True:
            resp = admin.get(
                "/api/audit", params={"limit": 2, **({"cursor": cursor} if cursor else {})}
            )
            paged += resp.json()
            cursor = resp.headers.get("X-Next-Cursor")
            if not cursor:
                break
        everything = _entries(admin, limit=1000)
        assert paged == everything and len(everything) >= len(expected)
        assert [e["id"] for e in everything] == sorted((e["id"] for e in everything), reverse=True)
        bad = admin.get("/api/audit", params={"since": "yesterday"})
        assert bad.status_code == 422 and bad.json()["detail"].startswith("since:")

    env = venv_path_env({k: v for k, v in os.environ.items() if not k.startswith("CLOUDOPS_")})
    env |= {"CLOUDOPS_API_URL": relay.base_url, "CLOUDOPS_API_TOKEN": ADMIN}
    out = run_cloudops("audit", "--actor", "op", "--action", "cancel", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1 and started in out.stdout and " op " in out.stdout

    # The execution retention leaves the audit log alone.
    engine = make_engine(pg_url)
    try:
        count = select(func.count()).select_from(audit_log)
        with engine.connect() as conn:
            before = conn.execute(count).scalar()
        prune(engine, retention_days=1, min_keep=0, now=None)
        with engine.connect() as conn:
            assert conn.execute(count).scalar() == before
    finally:
        engine.dispose()
    logs = relay.logs()
    assert all(s not in logs for s in secrets.values())
