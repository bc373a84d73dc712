"""Slow clients: one that reads nothing for 10 s during fast output neither grows the relay's
memory past a bound nor slows another client; it is dropped once it left more than
CLOUDOPS_STREAM_BUFFER_BYTES waiting, and gets everything by resuming; one that stays stuck
past the stall limit is closed with a reason (SSE and WebSocket) and resumes."""

from __future__ import annotations

import http.client
import json
import re
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import psutil
import pytest
import redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from events.models import parse_time
from events.settings import Settings
from tests.relay.conftest import StartRelay
from tests.relay.helpers import RelayProcess, parse_sse, sse_events, wait_for
from tests.relay.publish import ScriptedRun

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MIB = 1024 * 1024


# How many times the dropped client may resume before it must have the whole stream.
RESUMES = 10


class RawSseClient:
    """An SSE request on a plain socket with a small receive buffer, read only when asked."""

    def __init__(self, relay: RelayProcess, path: str, last_event_id: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        self.sock.connect(("127.0.0.1", relay.port))
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            f"Authorization: Bearer {relay.tokens[0]}\r\nLast-Event-ID: {last_event_id}\r\n\r\n"
        )
        self.sock.sendall(request.encode())

    def lines(self) -> Iterator[str]:
        self.sock.settimeout(30)
        resp = http.client.HTTPResponse(self.sock)
        resp.begin()
        assert resp.status == 200
        while True:
            line = resp.readline()
            if not line:
                return
            yield line.decode().rstrip("\r\n")

    def close(self) -> None:
        self.sock.close()


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.interval_s = interval_s
        self.samples: list[int] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append(self.proc.memory_info().rss)
            self.stopped.wait(self.interval_s)


def chunk_text(n: int, size: int) -> str:
    head = f"{n:08d} "
    return head + "x" * (size - len(head) - 1) + "\n"


def test_client_reading_nothing_for_10s(
    relay: RelayProcess, api: httpx.Client, settings: Settings, rclient: redis.Redis
) -> None:
    size, rate, seconds = 4096, 1000, 12  # 4 MB/s of output for 12 s
    chunks = [chunk_text(n, size) for n in range(1, rate * seconds + 1)]
    ex = "ex_slow_" + uuid.uuid4().hex[:8]
    go = threading.Event()
    run = ScriptedRun(rclient, settings, ex, chunks, rate_per_s=rate, start_event=go)
    run.start()

    latencies: list[float] = []
    fast_ids: list[int] = []
    fast_error: list[BaseException] = []

    def fast_reader(ready: threading.Event) -> None:
        try:
            with api.stream("GET", f"/api/executions/{ex}/events") as stream:
                lines = stream.iter_lines()
                assert next(lines).startswith("retry:")
                ready.set()
                for m in sse_events(lines):
                    env = json.loads(m.data)
                    if env["event"] == "execution_output":
                        sent = parse_time(env["payload"]["timestamp"]).timestamp()
                        latencies.append(time.time() - sent)
                    fast_ids.append(env["id"])
        except BaseException as e:
            fast_error.append(e)
            ready.set()

    # Baseline once the relay is warm and both clients are connected.
    ready = threading.Event()
    fast = threading.Thread(target=fast_reader, args=(ready,), daemon=True)
    fast.start()
    assert ready.wait(10)
    slow = RawSseClient(relay, f"/api/executions/{ex}/events")
    wait_for(lambda: 'kind="sse"} 2' in api.get("/metrics").text, 10.0, 0.05, "two clients")
    sampler = RssSampler(relay.pid)
    sampler.start()
    wait_for(lambda: len(sampler.samples) >= 5, 5.0)
    baseline = max(sampler.samples)
    t_start = time.monotonic()
    go.set()

    # The slow client reads nothing for 10 s while the output flows: it is dropped as soon as
    # 4 MiB (the default bound) wait for it, long before the 30 s stall limit.
    wait_for(
        lambda: (
            'cloudops_relay_clients_dropped_total{reason="buffer"} 1.0' in api.get("/metrics").text
        ),
        8.0,
        0.1,
        "the slow client to be dropped",
    )
    dropped_after_s = time.monotonic() - t_start
    wait_for(lambda: time.monotonic() - t_start >= 10.0, 15.0, 0.1)
    peak_during_stall = max(sampler.samples)
    slow_ids: list[int] = []
    slow_out: list[str] = []
    comments: list[str] = []
    for m in parse_sse(slow.lines()):
        if m.kind == "comment":
            comments.append(m.data)
        if m.kind != "event":
            continue
        env = json.loads(m.data)
        slow_ids.append(env["id"])
        if env["event"] == "execution_output":
            slow_out.append(env["payload"]["output"])
    slow.close()
    assert not comments or comments[-1].startswith("error: slow client, left more than")
    # It resumes where it was dropped and gets the rest, reconnecting with Last-Event-ID as
    # EventSource does if it is dropped again: on a machine where this reader cannot keep up
    # with the 4 MB/s still flowing, it is (the same rule, applied again).
    complete = False
    resumes = 0
    while not complete and resumes < RESUMES:
        resumes += 1
        resumed = RawSseClient(relay, f"/api/executions/{ex}/events", last_event_id=slow_ids[-1])
        for m in sse_events(resumed.lines()):
            env = json.loads(m.data)
            slow_ids.append(env["id"])
            if env["event"] == "execution_output":
                slow_out.append(env["payload"]["output"])
            complete = env["event"] == "execution_complete"
        resumed.close()
    assert complete, f"no execution_complete after {RESUMES} resumes"
    fast.join(30)
    run.join(30)
    sampler.stopped.set()
    sampler.join()
    assert run.error is None and not fast_error

    total = run.total_events
    assert fast_ids == list(range(1, total + 1))
    assert slow_ids == list(range(1, total + 1))
    assert "".join(slow_out) == "".join(chunks)
    growth_mib = (max(sampler.samples) - baseline) / MIB
    stall_growth_mib = (peak_during_stall - baseline) / MIB
    lat = sorted(latencies)
    p50, p99, worst = lat[len(lat) // 2], lat[int(len(lat) * 0.99)], lat[-1]
    dropped = api.get("/metrics").text
    print(
        f"\nslow client: {total} events, {len(''.join(chunks)) / MIB:.0f} MiB of output in"
        f" {run.finished_at and run.finished_at - t_start:.1f} s; dropped after"
        f" {dropped_after_s:.1f} s; relay RSS baseline"
        f" {baseline / MIB:.1f} MiB, growth while the client read nothing"
        f" {stall_growth_mib:.1f} MiB, overall {growth_mib:.1f} MiB;"
        f" other client's latency p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms,"
        f" max {worst * 1000:.1f} ms (mean {statistics.mean(lat) * 1000:.1f} ms)"
    )
    # Unbounded buffering would have held the 10 s backlog: ~40 MiB.
    assert growth_mib < 20, f"relay RSS grew {growth_mib:.1f} MiB"
    assert p99 < 0.5, f"the other client's p99 latency was {p99 * 1000:.0f} ms"
    # The client once, and at most once per resume: a resume too slow for the output still
    # flowing is dropped too (after its last bytes, execution_complete included, when that
    # comes at its end).
    drops = re.search(r"^cloudops_clients_dropped_total (\d+)", dropped, re.MULTILINE)
    assert drops is not None and 1 <= int(drops.group(1)) <= resumes + 1, drops


@pytest.fixture
def quick_stall_relay(start: StartRelay) -> RelayProcess:
    return start(env={"RELAY_TEST_STALL_LIMIT_S": "2"})


def stall_run(rclient: redis.Redis, settings: Settings, prefix: str) -> tuple[str, ScriptedRun]:
    """An execution of 8000 lines of 4 KiB at 2000/s: more than a stuck client's socket
    buffers hold, so its stream stalls."""
    ex = prefix + uuid.uuid4().hex[:8]
    chunks = [chunk_text(n, 4096) for n in range(1, 8001)]
    return ex, ScriptedRun(rclient, settings, ex, chunks, rate_per_s=2000)


def test_stuck_sse_client_is_closed_with_a_reason_and_resumes(
    quick_stall_relay: RelayProcess, settings: Settings, rclient: redis.Redis
) -> None:
    relay = quick_stall_relay
    ex, run = stall_run(rclient, settings, "ex_stuck_")
    stuck = RawSseClient(relay, f"/api/executions/{ex}/events")
    with relay.client() as api:
        wait_for(lambda: 'kind="sse"} 1' in api.get("/metrics").text, 10.0, 0.05)
        run.start()
        wait_for(
            lambda: "cloudops_clients_dropped_total 1" in api.get("/metrics").text,
            20.0,
            0.1,
            "the stuck client to be dropped",
        )
        wait_for(lambda: 'kind="sse"} 0' in api.get("/metrics").text, 5.0, 0.05)
        # What it had received, then the reason (if it fit), then the end of the stream.
        messages = list(parse_sse(stuck.lines()))
        stuck.close()
        ids = [m.id for m in messages if m.kind == "event"]
        assert ids == list(range(1, len(ids) + 1))
        assert len(ids) < run.total_events
        comments = [m.data for m in messages if m.kind == "comment"]
        assert not comments or comments[-1].startswith("error: slow client")
        rest = []
        last = ids[-1] if ids else 0
        with api.stream(
            "GET", f"/api/executions/{ex}/events", headers={"Last-Event-ID": str(last)}
        ) as stream:
            rest = [m.id for m in sse_events(stream.iter_lines())]
        assert ids + rest == list(range(1, run.total_events + 1))
    run.join(30)
    relay.stop()
    assert "closing a slow SSE client" in relay.logs()


def test_stuck_ws_client_is_closed_1013_and_resumes(
    quick_stall_relay: RelayProcess, settings: Settings, rclient: redis.Redis
) -> None:
    relay = quick_stall_relay
    ex, run = stall_run(rclient, settings, "ex_stuckws_")
    sock = socket.create_connection(("127.0.0.1", relay.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    # No permessage-deflate: 4 KiB of "xxx" would shrink to a few bytes and never fill a buffer.
    with (
        connect(
            relay.ws_url, sock=sock, additional_headers=relay.headers, max_queue=4, compression=None
        ) as ws,
        relay.client() as api,
    ):
        ws.send(json.dumps({"subscribe": ex}))
        assert json.loads(ws.recv(timeout=5))["subscribed"] == ex
        run.start()
        wait_for(
            lambda: "cloudops_clients_dropped_total 1" in api.get("/metrics").text,
            20.0,
            0.1,
            "the stuck socket to be dropped",
        )
        got: list[int] = []
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                got.append(json.loads(ws.recv(timeout=10))["id"])
        assert got == list(range(1, len(got) + 1))
        rcvd = closed.value.rcvd
        print(f"\nstuck WebSocket: got {len(got)} events, then close {rcvd}")
        if rcvd is not None:  # the close frame arrives only if the socket drained in time
            assert rcvd.code == 1013
            assert rcvd.reason.startswith(f"too slow: resubscribe {ex} with after=")
            assert int(rcvd.reason.rsplit("=", 1)[1]) >= len(got)
        last = got[-1] if got else 0
        with connect(relay.ws_url, additional_headers=relay.headers) as again:
            again.send(json.dumps({"subscribe": ex, "after": last}))
            assert json.loads(again.recv(timeout=5))["subscribed"] == ex
            rest: list[int] = []
            while not rest or rest[-1] != run.total_events:
                rest.append(json.loads(again.recv(timeout=10))["id"])
        assert got + rest == list(range(1, run.total_events + 1))
    run.join(30)
