"""Acceptance of issue 15 on a real fleet: 1,000 executions (commands, failures, cancels,
playbooks) through a real worker and relay archiving into PostgreSQL; then every key of the
prefix deleted from Redis, and then a brand-new Redis: every record, output and SSE replay
the same, byte for byte and id for id, served from the database; the list and its search
over HTTP (each filter, case-insensitive q, since/until, cursor pages, running executions)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from events.db.engine import make_engine
from events.db.query import History
from events.db.rows import record_hosts
from events.db.schema import executions
from events.vocabulary import Status
from tests.db.fleet import Fleet, Seen, list_all, playbook, see_all
from tests.db.pg import create_pg_database, drop_pg_database
from tests.helpers import cloudops_argv, embedded_env, wait_until
from tests.relay.test_streams import ws_connect, ws_until_complete

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 1000
TERMINAL = {s.value for s in Status if s.terminal}


def _body(i: int) -> dict[str, Any]:
    kind = i % 10
    if kind == 8:
        return {"commandType": "playbook", "playbook": playbook(i)}
    if kind in (6, 7):
        return {"commandType": "script", "command": f"echo fail-{i} Beta >&2; exit 3"}
    if kind == 9:
        return {"commandType": "script", "command": f"sleep 30 # cancel-{i}"}
    return {"commandType": "script", "command": f"echo run-{i} Alpha"}


def _submit(api: httpx.Client, body: dict[str, Any]) -> str:
    resp = api.post("/api/executions", json=body)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["executionId"])


def _archived(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            q = select(func.count()).select_from(executions).where(executions.c.archive_done)
            return int(conn.execute(q).scalar_one())
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("fleet-history"), pg_url)
    f.start()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def ran(fleet: Fleet) -> dict[str, Seen]:
    """The 1,000 executions, ended and archived; what the relay showed of each while Redis
    held them."""
    ids: list[str] = []
    with fleet.api() as api:
        for i in range(N):
            ids.append(_submit(api, _body(i)))
            if i % 10 == 9:
                assert api.post(f"/api/executions/{ids[-1]}/cancel").status_code == 202
    client = fleet.client()

    def ended() -> bool:
        pipe = client.pipeline(transaction=False)
        for ex in ids:
            pipe.hget(f"{fleet.prefix}:ex:{{{ex}}}:record", "status")
        return all(s is not None and s.decode() in TERMINAL for s in pipe.execute())

    wait_until(ended, 120.0, 0.2, what="every execution to end")
    client.close()
    wait_until(lambda: _archived(fleet.database_url) >= N, 30.0, 0.2, what="all archived")
    return see_all(fleet, ids)


def _records(seen: dict[str, Seen]) -> list[dict[str, Any]]:
    return [json.loads(s.record) for s in seen.values()]


def _newest_first(records: list[dict[str, Any]]) -> list[str]:
    recs = sorted(records, key=lambda r: (r["queuedAt"], r["executionId"]), reverse=True)
    return [r["executionId"] for r in recs]


def test_every_route_serves_the_same_once_redis_forgot(fleet: Fleet, ran: dict[str, Seen]) -> None:
    statuses = [json.loads(s.record)["status"] for s in ran.values()]
    assert statuses.count("failed") == 200 and statuses.count("cancelled") == 100
    assert sum(1 for r in _records(ran) if r["commandType"] == "playbook") == 100
    assert all(s.sse[-1][1] == "execution_complete" for s in ran.values())
    assert [m[0] for m in ran[next(iter(ran))].sse] == list(
        range(1, len(ran[next(iter(ran))].sse) + 1)
    )

    assert fleet.forget_everything() > N
    assert see_all(fleet, ran) == ran
    sample = list(ran)[:: N // 20]
    with fleet.api() as api:
        for ex in sample:
            sse = ran[ex].sse
            # Last-Event-ID resume from the database: the rest, and 204 past the end.
            with api.stream(
                "GET", f"/api/executions/{ex}/events", headers={"Last-Event-ID": "2"}
            ) as stream:
                rest = [line for line in stream.iter_lines() if line.startswith("id: ")]
            assert rest == [f"id: {m[0]}" for m in sse[2:]]
            end = api.get(f"/api/executions/{ex}/events", params={"after": sse[-1][0]})
            assert end.status_code == 204
    assert fleet.relay is not None
    with ws_connect(fleet.relay) as ws:
        for ex in sample[:5]:
            ws.send(json.dumps({"subscribe": ex, "after": 0}))
            assert json.loads(ws.recv(timeout=10))["subscribed"] == ex
            assert ws_until_complete(ws, ex) == [m[2] for m in ran[ex].sse]

    # The relay restarted on a brand-new Redis: it still lists and serves every execution.
    fleet.stop()
    fleet.start()
    with fleet.api() as api:
        listed = list(list_all(api))
    assert [r["executionId"] for r in listed] == _newest_first(_records(ran))
    assert [json.dumps(r, separators=(",", ":")).encode() for r in listed] == [
        ran[r["executionId"]].record for r in listed
    ]
    assert see_all(fleet, sample) == {ex: ran[ex] for ex in sample}


def _stored_through(history: History, execution_id: str) -> int:
    state = history.get_state(execution_id)
    return -1 if state is None else state.archived_through


def sse_ids(api: httpx.Client, execution_id: str) -> list[int]:
    with api.stream("GET", f"/api/executions/{execution_id}/events") as stream:
        return [int(line[4:]) for line in stream.iter_lines() if line.startswith("id: ")]


def _ids(api: httpx.Client, **filters: Any) -> list[str]:
    return [r["executionId"] for r in list_all(api, **filters)]


def test_search_filters_pages_and_running(fleet: Fleet, ran: dict[str, Seen]) -> None:
    records = _records(ran)
    by_id = {r["executionId"]: r for r in records}

    def expect(pred: Any) -> list[str]:
        return _newest_first([r for r in records if pred(r)])

    with fleet.api() as api:
        assert _ids(api, status="failed") == expect(lambda r: r["status"] == "failed")
        assert _ids(api, commandType="playbook") == expect(lambda r: r["commandType"] == "playbook")
        assert _ids(api, q="ALPHA") == expect(lambda r: "alpha" in r["command"].lower())
        assert len(_ids(api, q="ALPHA")) == 600
        assert _ids(api, q="run-7") == expect(lambda r: "run-7" in r["command"])
        assert _ids(api, q="nightly CHECK 18") == expect(
            lambda r: r["commandType"] == "playbook" and "nightly check 18" in r["command"].lower()
        )
        host = next(h for r in records for h in record_hosts(r))
        assert _ids(api, host=host) == expect(lambda r: host in record_hosts(r))
        assert _ids(api, submittedBy="nobody") == []
        order = _newest_first(records)
        since, until = by_id[order[700]]["queuedAt"], by_id[order[100]]["queuedAt"]
        window = _ids(api, since=since, until=until)
        assert window == expect(lambda r: since <= r["queuedAt"] < until)
        assert len(window) == 600
        # Cursor pages over 1,000 results: newest first, no duplicate, no gap, any page size.
        for limit in (500, 333, 7):
            assert [r["executionId"] for r in list_all(api, limit=limit)] == order
        # `cloudops ls --remote` with the same filters and cursor.
        assert fleet.relay is not None
        env = {**embedded_env(), "CLOUDOPS_API_TOKEN": fleet.relay.tokens[0]}
        argv = ["ls", "--remote", fleet.relay.base_url, "--json", "--q", "alpha", "--limit", "5"]
        first_page = subprocess.run(cloudops_argv(*argv), env=env, capture_output=True, text=True)
        assert first_page.returncode == 0, first_page.stderr
        got = [json.loads(line)["executionId"] for line in first_page.stdout.splitlines()]
        assert got == _ids(api, q="ALPHA")[:5]
        cursor = first_page.stderr.split("--cursor ")[1].strip()
        second = subprocess.run(
            cloudops_argv(*argv, "--cursor", cursor), env=env, capture_output=True, text=True
        )
        got = [json.loads(line)["executionId"] for line in second.stdout.splitlines()]
        assert got == _ids(api, q="ALPHA")[5:10]

        bad = api.get("/api/executions", params={"status": "bogus", "since": "yesterday"})
        assert bad.status_code == 422
        assert "status" in bad.json()["detail"] and "since" in bad.json()["detail"]
        assert api.get("/api/executions", params={"cursor": "garbage"}).status_code == 422

        # A running execution is in the list, first, with its live status.
        ex = _submit(api, {"commandType": "script", "command": "sleep 30 # still running"})
        wait_until(lambda: api.get(f"/api/executions/{ex}").json()["status"] == "running", 20.0)
        first = api.get("/api/executions", params={"limit": 5}).json()[0]
        assert first["executionId"] == ex and first["status"] == "running"
        assert _ids(api, status="running") == [ex]
        assert ex in _ids(api, q="STILL running")
        # A running execution's events reach the database within 10 s (CONTRACT §8), an
        # ended one's within 5 s of its end.
        engine = make_engine(fleet.database_url)
        history = History(engine)
        wait_until(lambda: _stored_through(history, ex) >= 1, 10.0, what="running, archived")
        assert api.post(f"/api/executions/{ex}/cancel").status_code == 202
        wait_until(lambda: api.get(f"/api/executions/{ex}").json()["status"] == "cancelled", 20.0)
        last = len(list(sse_ids(api, ex)))
        wait_until(lambda: _stored_through(history, ex) == last, 5.0, what="ended, archived")
        engine.dispose()


def test_relay_and_worker_refuse_a_schema_behind(tmp_path: Path) -> None:
    url = create_pg_database("behind")
    try:
        env = embedded_env()
        env.update(
            CLOUDOPS_DATABASE_URL=url,
            CLOUDOPS_REDIS_URL="redis://127.0.0.1:6379/0",
            CLOUDOPS_KEY_PREFIX="t" + str(time.time_ns()),
        )
        for command in (["relay", "--port", "0"], ["worker"]):
            done = subprocess.run(
                cloudops_argv(*command), env=env, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 2, done
            lines = done.stderr.splitlines()
            assert len(lines) == 1 and "cloudops db upgrade" in lines[0], done.stderr
    finally:
        drop_pg_database(url)
