"""SSE and WebSocket streams: equal to the history, resumable, live, and gap-free when the
relay's pub/sub connection breaks or Redis loses a pub/sub message."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import psutil
import pytest
import redis
from websockets.sync.client import ClientConnection, connect

from events.keys import Keys
from events.models import ExecutionOutputPayload, utc_now
from events.publisher import Publisher
from events.record_store import RecordStore
from events.settings import Settings
from events.vocabulary import CommandType
from tests.helpers import encode_parts
from tests.relay.helpers import RelayProcess, history_json, parse_sse, sse_events, wait_for
from tests.relay.test_rest import submit, wait_status

pytestmark = pytest.mark.integration


def read_sse(api: httpx.Client, path: str, **kwargs: Any) -> list[str]:
    with api.stream("GET", path, **kwargs) as stream:
        assert stream.status_code == 200
        return [m.data for m in sse_events(stream.iter_lines())]


def ws_connect(relay: RelayProcess) -> ClientConnection:
    return connect(relay.ws_url, additional_headers=relay.headers, open_timeout=5)


def ws_until_complete(ws: ClientConnection, execution_id: str) -> list[str]:
    out: list[str] = []
    while True:
        text = str(ws.recv(timeout=10))
        msg = json.loads(text)
        if msg.get("executionId") != execution_id:
            continue
        out.append(text)
        if msg["event"] == "execution_complete":
            return out


def test_sse_equals_history(
    relay: RelayProcess, api: httpx.Client, rclient: redis.Redis, keys: Keys
) -> None:
    ex = submit(api, "lines=60 chunk=3 interval_ms=5")
    with api.stream("GET", f"/api/executions/{ex}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert stream.headers["cache-control"] == "no-cache"
        assert stream.headers["x-accel-buffering"] == "no"
        messages = list(parse_sse(stream.iter_lines()))  # ends by itself after complete
    assert messages[0].kind == "retry" and int(messages[0].data) > 0
    events = [m for m in messages if m.kind == "event"]
    assert [m.data for m in events] == history_json(rclient, keys, ex)
    assert [m.id for m in events] == list(range(1, 23))
    assert all(json.loads(m.data)["event"] == m.event for m in events)


def test_ws_equals_history(
    relay: RelayProcess, api: httpx.Client, rclient: redis.Redis, keys: Keys
) -> None:
    first = submit(api, "lines=40 chunk=2 interval_ms=5")
    second = submit(api, "lines=30 chunk=1 interval_ms=5")
    with ws_connect(relay) as ws:
        for ex in (first, second):
            ws.send(json.dumps({"subscribe": ex, "after": 0}))
        # Each subscription's ack comes before its own events; the first one's events may
        # come before the second one's ack.
        acked: list[str] = []
        got: dict[str, list[str]] = {first: [], second: []}
        ended: set[str] = set()
        while len(ended) < 2:
            text = str(ws.recv(timeout=10))
            msg = json.loads(text)
            if "subscribed" in msg:
                assert msg == {"subscribed": msg["subscribed"], "after": 0}
                assert not got[msg["subscribed"]], "an event came before its subscription's ack"
                acked.append(msg["subscribed"])
                continue
            assert msg["executionId"] in acked
            got[msg["executionId"]].append(text)
            if msg["event"] == "execution_complete":
                ended.add(msg["executionId"])
        assert sorted(acked) == sorted([first, second])
    for ex in (first, second):
        assert got[ex] == history_json(rclient, keys, ex)


def test_resume_points(relay: RelayProcess, api: httpx.Client) -> None:
    ex = submit(api, "lines=8")
    wait_status(api, ex, "completed")
    ids = [json.loads(d)["id"] for d in read_sse(api, f"/api/executions/{ex}/events?after=3")]
    assert ids == list(range(4, 11))
    # The header wins over ?after (EventSource sends it on every reconnect).
    headers = {"Last-Event-ID": "6"}
    data = read_sse(api, f"/api/executions/{ex}/events?after=2", headers=headers)
    assert [json.loads(d)["id"] for d in data] == [7, 8, 9, 10]
    # At or past the end: 204, which tells EventSource to stop reconnecting.
    assert api.get(f"/api/executions/{ex}/events", headers={"Last-Event-ID": "10"}).status_code == (
        204
    )
    with ws_connect(relay) as ws:
        ws.send(json.dumps({"subscribe": ex, "after": 7}))
        assert json.loads(ws.recv(timeout=5)) == {"subscribed": ex, "after": 7}
        assert [json.loads(t)["id"] for t in ws_until_complete(ws, ex)] == [8, 9, 10]


def test_all_executions_live_over_sse_and_ws(relay: RelayProcess, api: httpx.Client) -> None:
    with api.stream("GET", "/api/events") as stream, ws_connect(relay) as ws:
        lines = stream.iter_lines()
        assert next(lines).startswith("retry:")  # sent once the stream is registered
        ws.send(json.dumps({"subscribe": "*"}))
        assert json.loads(ws.recv(timeout=5)) == {"subscribed": "*", "after": 0}
        a = submit(api, "lines=3")
        b = submit(api, "lines=2")
        seen: dict[str, list[int]] = {a: [], b: []}
        for m in sse_events(lines):
            env = json.loads(m.data)
            seen[env["executionId"]].append(env["id"])
            if sum(map(len, seen.values())) == 9:
                break
        assert seen == {a: [1, 2, 3, 4, 5], b: [1, 2, 3, 4]}
        ws_seen = {a: ws_until_complete(ws, a)}
        assert [json.loads(t)["id"] for t in ws_seen[a]] == [1, 2, 3, 4, 5]


def test_sse_pings_while_idle(relay: RelayProcess, api: httpx.Client) -> None:
    ex = submit(api, "lines=1 hold=1")
    pings = 0
    with api.stream("GET", f"/api/executions/{ex}/events") as stream:
        for m in parse_sse(stream.iter_lines()):
            if m.kind == "comment" and m.data == "ping":
                pings += 1
                if pings == 2:
                    api.post(f"/api/executions/{ex}/cancel")
    assert pings >= 2


def test_ws_bad_messages_get_errors_and_the_socket_lives_on(
    relay: RelayProcess, api: httpx.Client
) -> None:
    ex = submit(api, "lines=2")
    cases: list[tuple[str | bytes, dict[str, Any]]] = [
        ("{", {"error": "invalid JSON", "field": None}),
        ("[1]", {"error": "a message must be a JSON object", "field": None}),
        ('{"hello": 1}', {"error": 'expected "subscribe" or "unsubscribe"', "field": None}),
        ('{"subscribe": 5}', {"error": 'must be an execution id or "*"', "field": "subscribe"}),
        (
            json.dumps({"subscribe": ex, "after": "3"}),
            {"error": "must be a non-negative integer", "field": "after", "target": ex},
        ),
        (
            json.dumps({"subscribe": "ex_nope"}),
            {"error": "unknown execution: ex_nope", "field": "subscribe", "target": "ex_nope"},
        ),
        (b"\x00", {"error": "send JSON text messages", "field": None}),
    ]
    with ws_connect(relay) as ws:
        for sent, expected in cases:
            ws.send(sent)
            assert json.loads(ws.recv(timeout=5)) == expected
        ws.send(json.dumps({"subscribe": ex}))
        assert json.loads(ws.recv(timeout=5))["subscribed"] == ex
        assert len(ws_until_complete(ws, ex)) == 4
        ws.send(json.dumps({"unsubscribe": ex}))
        assert json.loads(ws.recv(timeout=5)) == {"unsubscribed": ex}


def _hub_connection_id(relay: RelayProcess, rclient: redis.Redis) -> int:
    """The Redis client id of this relay's pub/sub connection (matched by its local port)."""
    ports = {
        c.laddr.port
        for c in psutil.Process(relay.pid).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == 6379
    }
    for client in rclient.client_list(_type="pubsub"):
        port = int(str(client["addr"]).rsplit(":", 1)[1])
        if port in ports and str(client.get("name", "")).startswith("cloudops-relay-"):
            return int(client["id"])
    raise AssertionError("no pub/sub connection of the relay found")


def test_pubsub_connection_lost_mid_stream_no_gap(
    relay: RelayProcess, api: httpx.Client, rclient: redis.Redis, keys: Keys
) -> None:
    ex = submit(api, "lines=300 chunk=1 interval_ms=5")
    ids: list[int] = []
    killed = 0
    with api.stream("GET", f"/api/executions/{ex}/events") as stream:
        for m in sse_events(stream.iter_lines()):
            assert m.id is not None
            ids.append(m.id)
            if len(ids) in (30, 120):  # twice, while the output goes on
                rclient.client_kill_filter(_id=str(_hub_connection_id(relay, rclient)))
                killed += 1
    assert killed == 2
    assert ids == list(range(1, 303))
    assert [json.loads(d)["id"] for d in history_json(rclient, keys, ex)] == ids
    metrics = api.get("/metrics").text
    reconnects = [ln for ln in metrics.splitlines() if ln.startswith("cloudops_relay_pubsub_rec")]
    assert float(reconnects[0].split()[1]) >= 2


def test_events_missing_from_pubsub_come_from_history(
    relay: RelayProcess,
    api: httpx.Client,
    settings: Settings,
    rclient: redis.Redis,
    keys: Keys,
) -> None:
    """An id jump makes the stream read the history; so does the hub's check of the counter
    when the channel stays quiet (within ~1 s)."""
    records = RecordStore(rclient, keys, settings)
    ex = "ex_lostmessages"
    records.create(
        ex, command="x", command_type=CommandType.SCRIPT, options={}, queued_at=utc_now()
    )
    publisher = Publisher(rclient, keys, settings)

    def sneak(n: int, text: str) -> None:
        # Appended to the history (with its id) but never published on the channel.
        payload = ExecutionOutputPayload(
            execution_id=ex, output=text, stream="stdout", timestamp=utc_now()
        )
        head, tail = encode_parts("execution_output", ex, payload)
        assert rclient.incr(keys.seq(ex)) == n
        rclient.xadd(keys.history(ex), {"e": head + b"%d" % n + tail}, id=f"{n}-0")

    def output(text: str) -> None:
        publisher.publish(
            ExecutionOutputPayload(
                execution_id=ex, output=text, stream="stdout", timestamp=utc_now()
            ),
            wait=True,
        )

    try:
        with api.stream("GET", f"/api/executions/{ex}/events") as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("retry:")
            events = sse_events(lines)
            output("a")  # id 1, live
            assert next(events).id == 1
            sneak(2, "b")
            output("c")  # id 3: the jump brings 2 from the history first
            assert [next(events).id, next(events).id] == [2, 3]
            sneak(4, "d")  # nothing live follows: the idle refill finds it
            t0 = time.monotonic()
            got = next(events)
            waited_s = time.monotonic() - t0
            assert got.id == 4 and json.loads(got.data)["payload"]["output"] == "d"
            assert waited_s < 3.0
        metrics = api.get("/metrics").text.splitlines()
        lost = [ln for ln in metrics if ln.startswith("cloudops_relay_pubsub_lost_total ")]
        assert float(lost[0].split()[1]) >= 1
    finally:
        publisher.close()


def test_sse_with_ticket_and_ws_with_ticket(relay: RelayProcess, api: httpx.Client) -> None:
    ex = submit(api, "lines=2")

    def ticket() -> str:
        return str(api.post("/api/stream-tickets", json={"executionId": ex}).json()["ticket"])

    with httpx.Client(base_url=relay.base_url) as anon:
        data = read_sse(anon, f"/api/executions/{ex}/events", params={"ticket": ticket()})
    assert len(data) == 4
    with connect(f"{relay.ws_url}?ticket={ticket()}", open_timeout=5) as ws:
        ws.send(json.dumps({"subscribe": ex}))
        assert json.loads(ws.recv(timeout=5))["subscribed"] == ex
        assert len(ws_until_complete(ws, ex)) == 4


def test_streams_closed_at_once_are_forgotten(relay: RelayProcess, api: httpx.Client) -> None:
    """Clients that leave right after the headers (or the subscribe ack) leave nothing behind:
    no stream task, no hub route (Python 3.11 + redis-py could swallow their cancellation)."""
    ex = submit(api, "lines=1 hold=1")
    path = f"/api/executions/{ex}/events"

    async def open_and_leave() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {relay.tokens[0]}\r\n"
        writer.write((request + "\r\n").encode())
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    async def many() -> None:
        await asyncio.gather(*(open_and_leave() for _ in range(100)))

    def sse_forgotten() -> bool:
        return 'cloudops_connected_clients{kind="sse"} 0' in api.get("/metrics").text

    for _ in range(3):
        asyncio.run(many())
        # Each round fills the address's stream slots (100): the next waits until the relay
        # has seen this one's clients leave, or its streams are refused with 429, rightly.
        wait_for(sse_forgotten, 10.0, 0.05, "the SSE streams to be forgotten")
    for _ in range(20):
        with ws_connect(relay) as ws:
            ws.send(json.dumps({"subscribe": ex}))
            ws.recv(timeout=5)

    def forgotten() -> bool:
        text = api.get("/metrics").text
        return (
            'cloudops_connected_clients{kind="sse"} 0' in text
            and 'cloudops_connected_clients{kind="ws"} 0' in text
            and "cloudops_relay_pubsub_channels 0" in text
        )

    wait_for(forgotten, 10.0, 0.1, "every stream to be forgotten")
    api.post(f"/api/executions/{ex}/cancel")
