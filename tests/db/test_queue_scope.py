"""Queue scopes (issue 16 item 3) on a real fleet: a real worker consuming `web` and `db`, a
real relay (`cloudops relay`'s app) on PostgreSQL, and a `web`-scoped operator token.

It runs a `web` playbook; a playbook with one `db` step, or a command (default queue), is a 403
naming the queue; it cannot read, follow or cancel a `db` execution (403 naming `db`), its list
shows only `web` executions, and its `/api/events` SSE and WebSocket `*` streams carry only
`web` executions while `web` and `db` executions run at once (an admin's stream, beside it,
carries both)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from events.db.schema import api_tokens
from events.settings import Settings
from tests.conftest import StartWorker
from tests.db.pg import empty_tables
from tests.helpers import run_cloudops, venv_path_env, wait_until
from tests.relay.helpers import RelayProcess, sse_events, start_relay

pytestmark = pytest.mark.integration

ADMIN = "tok-admin-scope-" + "ab" * 8


def _playbook(name: str, *queues: str) -> dict[str, Any]:
    steps = [
        {"id": f"s{n}", "queue": q, "command": f"for i in 1 2 3 4; do echo {q} $i; sleep 0.4; done"}
        for n, q in enumerate(queues, 1)
    ]
    return {"commandType": "playbook", "playbook": {"name": name, "steps": steps}}


@pytest.fixture
def relay(
    settings: Settings, tmp_path: Path, pg_url: str, start_worker: StartWorker
) -> Iterator[RelayProcess]:
    empty_tables(pg_url, api_tokens)
    start_worker(queues="web,db", concurrency=4)
    env = {"RELAY_TEST_DISPATCHER": "celery", "CLOUDOPS_DATABASE_URL": pg_url}
    r = start_relay(settings, tmp_path / "relay.log", tokens=(ADMIN,), env=env)
    yield r
    r.stop()


class Collector(threading.Thread):
    """The execution ids a `*` stream carries, until `stop` is set."""

    def __init__(self, relay: RelayProcess, token: str, kind: str) -> None:
        super().__init__(daemon=True)
        self.relay, self.token, self.kind = relay, token, kind
        self.seen: set[str] = set()
        self.ready = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        if self.kind == "ws":
            with connect(self.relay.ws_url, additional_headers=headers, open_timeout=10) as ws:
                ws.send(json.dumps({"subscribe": "*"}))
                assert json.loads(ws.recv(timeout=10))["subscribed"] == "*"
                self.ready.set()
                while not self.stop.is_set():
                    try:
                        msg = json.loads(ws.recv(timeout=0.5))
                    except TimeoutError:
                        continue
                    if "executionId" in msg:
                        self.seen.add(msg["executionId"])
            return
        with (
            httpx.Client(base_url=self.relay.base_url, headers=headers, timeout=30) as client,
            client.stream("GET", "/api/events") as stream,
        ):
            assert stream.status_code == 200
            self.ready.set()
            try:
                for msg in sse_events(stream.iter_lines()):
                    self.seen.add(json.loads(msg.data)["executionId"])
            except httpx.HTTPError:
                assert self.stop.is_set()  # the relay stopped at the end of the test


def _ended(api: httpx.Client, execution_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any]:
        rec: dict[str, Any] = api.get(f"/api/executions/{execution_id}").json()
        return rec if rec["status"] not in ("queued", "running") else {}

    return wait_until(done, timeout_s=60, what=f"{execution_id} ends")


def test_a_web_scoped_operator_sees_and_acts_on_web_only(relay: RelayProcess) -> None:
    with relay.client() as admin:
        made = admin.post("/api/tokens", json={"name": "web-op", "role": "operator",
                                               "queues": ["web"]})  # fmt: skip
        assert made.status_code == 201, made.text
    web_op = relay.client(headers={"Authorization": f"Bearer {made.json()['secret']}"})
    collectors = [
        Collector(relay, made.json()["secret"], "sse"),
        Collector(relay, made.json()["secret"], "ws"),
        Collector(relay, ADMIN, "ws"),
    ]
    for c in collectors:
        c.start()
    for c in collectors:
        assert c.ready.wait(15)
    with relay.client() as admin, web_op:
        # Both kinds at once: the admin starts a db run and the scoped operator a web run.
        db_ex = admin.post("/api/executions", json=_playbook("db-job", "db")).json()["executionId"]
        resp = web_op.post("/api/executions", json=_playbook("web-job", "web"))
        assert resp.status_code == 202, resp.text
        web_ex = resp.json()["executionId"]

        # Out of scope: a playbook with one db step, a command on the default queue.
        mixed = web_op.post("/api/executions", json=_playbook("mixed", "web", "db"))
        assert mixed.status_code == 403 and mixed.json()["detail"].endswith("not db"), mixed.text
        cmd = web_op.post("/api/executions", json={"commandType": "script", "command": "id"})
        assert cmd.status_code == 403 and "not cloudops" in cmd.json()["detail"], cmd.text

        # The db run: neither read, followed nor cancelled.
        for method, path in [
            ("GET", f"/api/executions/{db_ex}"),
            ("GET", f"/api/executions/{db_ex}/output"),
            ("GET", f"/api/executions/{db_ex}/events"),
            ("POST", f"/api/executions/{db_ex}/cancel"),
            ("POST", f"/api/executions/{db_ex}/rerun"),
        ]:
            got = web_op.request(method, path)
            assert got.status_code == 403 and "not db" in got.json()["detail"], (path, got.text)
        ticket = web_op.post("/api/stream-tickets", json={"executionId": db_ex})
        assert ticket.status_code == 403, ticket.text
        assert web_op.get(f"/api/executions/{web_ex}").status_code == 200
        listed = {r["executionId"] for r in web_op.get("/api/executions").json()}
        assert web_ex in listed and db_ex not in listed

        assert _ended(admin, web_ex)["status"] == "completed"
        assert _ended(admin, db_ex)["status"] == "completed"
        # Who started each (CONTRACT §9): the token's name, listed and filterable.
        assert admin.get(f"/api/executions/{web_ex}").json()["submittedBy"] == "web-op"
        assert admin.get(f"/api/executions/{db_ex}").json()["submittedBy"] == "env-1"
        mine = admin.get("/api/executions", params={"submittedBy": "web-op"}).json()
        assert [r["executionId"] for r in mine] == [web_ex]
        assert "web 4" in web_op.get(f"/api/executions/{web_ex}/output").text
    # `cloudops ls` through the relay says who started each.
    env = venv_path_env({k: v for k, v in os.environ.items() if not k.startswith("CLOUDOPS_")})
    env |= {"CLOUDOPS_API_URL": relay.base_url, "CLOUDOPS_API_TOKEN": ADMIN}
    ls = run_cloudops("ls", env=env)
    assert ls.returncode == 0, ls.stderr
    lines = {line.split()[0]: line.split()[3] for line in ls.stdout.splitlines()}
    assert (lines[web_ex], lines[db_ex]) == ("web-op", "env-1")
    # The admin's stream saw both; the scoped token's streams saw only the web run.
    wait_until(lambda: {web_ex, db_ex} <= collectors[2].seen, timeout_s=10, what="admin sees both")
    wait_until(lambda: all(web_ex in c.seen for c in collectors[:2]), timeout_s=10, what="web")
    for c in collectors:
        c.stop.set()
    for c in collectors[1:]:
        c.join(5)  # the WebSockets, before the relay stops (the SSE one ends with it)
    for c in collectors[:2]:
        assert c.seen == {web_ex}, (c.kind, c.seen)
