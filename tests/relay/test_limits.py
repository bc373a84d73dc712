"""Limits on what one client may hold (issue 20 findings 2, 3 and 4), against a real relay:
bodies, headers, connections, streams per token and per address, and the bytes a client that
reads nothing may leave waiting. Every refusal is counted in /metrics."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from tests.helpers import http_status
from tests.relay.conftest import StartRelay
from tests.relay.helpers import RelayProcess, wait_for
from tests.relay.test_rest import submit

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


def metric(relay: RelayProcess, name: str, reason: str) -> float:
    with relay.client() as api:
        text = api.get("/metrics").text
    prefix = f'{name}{{reason="{reason}"}} '
    line = next(ln for ln in text.splitlines() if ln.startswith(prefix))
    return float(line.split()[1])


def refused(relay: RelayProcess, reason: str) -> float:
    return metric(relay, "cloudops_relay_refused_total", reason)


def open_socket(relay: RelayProcess, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", relay.port))
    return sock


def read_all(sock: socket.socket, timeout_s: float = 10.0) -> bytes:
    """Everything until the relay closes the connection (or the timeout: then what came)."""
    sock.settimeout(timeout_s)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def post_head(relay: RelayProcess, length: int, token: bool = True) -> bytes:
    auth = f"Authorization: Bearer {relay.tokens[0]}\r\n" if token else ""
    return (
        f"POST /api/executions HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


@pytest.fixture
def limited(start: StartRelay) -> RelayProcess:
    return start(
        env={
            "CLOUDOPS_BODY_TIMEOUT_S": "1",
            "CLOUDOPS_HEADER_TIMEOUT_S": "1",
            "CLOUDOPS_SSE_PING_INTERVAL_S": "0.5",
        }
    )


def test_bodies_are_bounded_before_they_are_read(limited: RelayProcess) -> None:
    relay = limited
    rss_before = psutil.Process(relay.pid).memory_info().rss
    # 50 MB announced, one byte sent: answered at once, not waited for.
    sock = open_socket(relay)
    sock.sendall(post_head(relay, 50 * MIB) + b"{")
    t0 = time.monotonic()
    answer = read_all(sock)
    assert status_of(answer) == 413 and time.monotonic() - t0 < 2
    assert b"CLOUDOPS_MAX_BODY_BYTES" in answer
    # The same without a token, sent whole, six at once: refused without being parsed.
    body = b'{"commandType": "script", "command": "' + b"x" * (50 * MIB) + b'"}'
    socks = [open_socket(relay) for _ in range(6)]
    for s in socks:
        s.sendall(post_head(relay, len(body), token=False))
    for s in socks:
        with pytest.raises(OSError):
            s.sendall(body)  # the relay answered and closed: the upload breaks off
    assert all(status_of(read_all(s)) == 413 for s in socks)
    # A chunked body (no Content-Length) is counted as it comes.
    with relay.client() as api:
        chunks = (b"x" * 65536 for _ in range(40))
        resp = api.post("/api/executions", content=chunks)
        assert resp.status_code == 413
        # A small body without a valid token: 401 before it is read, even when it never comes.
        sock = open_socket(relay)
        sock.sendall(post_head(relay, 1000, token=False))
        t0 = time.monotonic()
        assert status_of(read_all(sock, 5)) == 401 and time.monotonic() - t0 < 0.9
        # With a token, a body that does not arrive within CLOUDOPS_BODY_TIMEOUT_S: 408.
        sock = open_socket(relay)
        sock.sendall(post_head(relay, 1000) + b'{"command')
        assert status_of(read_all(sock, 5)) == 408
        # /healthz stayed quick, RSS did not move, and normal requests still work.
        t0 = time.monotonic()
        assert api.get("/healthz").status_code == 200 and time.monotonic() - t0 < 0.2
        assert submit(api, "lines=1").startswith("ex_")
    growth = (psutil.Process(relay.pid).memory_info().rss - rss_before) / MIB
    assert growth < 20, f"relay RSS grew {growth:.0f} MiB"
    assert refused(relay, "body_too_large") == 8
    assert refused(relay, "body_timeout") == 1


def test_headers_are_bounded_in_size_and_time(limited: RelayProcess) -> None:
    relay = limited
    # An 8 MB header: refused once the head passes 16 KiB, never read whole.
    sock = open_socket(relay)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
    with pytest.raises(OSError):
        for _ in range(128):
            sock.sendall(b"a" * 65536)
    assert status_of(read_all(sock)) == 431
    # A request stopped mid-header, and a connection that says nothing: closed after 1 s.
    half, silent = open_socket(relay), open_socket(relay)
    half.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    t0 = time.monotonic()
    assert status_of(read_all(half, 10)) == 408
    assert status_of(read_all(silent, 10)) == 408
    assert time.monotonic() - t0 < 5
    # A keep-alive connection is not cut between requests by the header timer.
    with relay.client() as api:
        for _ in range(3):
            assert api.get("/healthz").status_code == 200
        assert refused(relay, "header_too_large") == 1
        assert refused(relay, "header_timeout") == 2
        # Headers of a normal size are fine.
        assert api.get("/healthz", headers={"X-Fine": "b" * 8000}).status_code == 200


def test_connections_are_capped(start: StartRelay) -> None:
    relay = start(env={"CLOUDOPS_MAX_CONNECTIONS": "20", "CLOUDOPS_HEADER_TIMEOUT_S": "30"})
    held = [open_socket(relay) for _ in range(20)]
    try:
        extra = open_socket(relay)
        answer = read_all(extra, 5)
        assert status_of(answer) == 503 and b"too many connections" in answer
    finally:
        for s in held:
            s.close()
    healthz = f"{relay.base_url}/healthz"
    wait_for(lambda: http_status(healthz, 2) == 200, 10.0, 0.1, "a free connection slot")
    assert refused(relay, "connections") >= 1


@pytest.fixture
def two_tokens(start: StartRelay, token: str) -> RelayProcess:
    return start(
        tokens=(token, token + "-b"),
        env={"CLOUDOPS_MAX_STREAMS_PER_TOKEN": "3", "CLOUDOPS_MAX_STREAMS_PER_ADDRESS": "4"},
    )


def _client(relay: RelayProcess, token: str, source: str) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=source)
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.Client(base_url=relay.base_url, headers=headers, transport=transport, timeout=10)


def test_streams_per_token_and_per_address(two_tokens: RelayProcess) -> None:
    relay = two_tokens
    a, b = relay.tokens
    with relay.client() as api:
        ex = submit(api, "lines=1 hold=1")
    path = f"/api/executions/{ex}/events"
    opened: list[Iterator[httpx.Response]] = []

    def open_stream(client: httpx.Client) -> int:
        cm = client.stream("GET", path)
        resp = cm.__enter__()
        if resp.status_code == 200:
            opened.append(cm)  # type: ignore[arg-type]
        else:
            resp.read()
            cm.__exit__(None, None, None)
        return resp.status_code

    clients = [_client(relay, a, "127.0.0.1") for _ in range(4)]
    clients += [_client(relay, b, "127.0.0.1") for _ in range(2)]
    clients += [_client(relay, b, "127.0.0.2") for _ in range(2)]
    try:
        assert [open_stream(c) for c in clients[:4]] == [200, 200, 200, 429]
        # Another token from the same address: one more fits the address's 4.
        assert [open_stream(c) for c in clients[4:6]] == [200, 429]
        # That token from another address: its own count.
        assert open_stream(clients[6]) == 200
        # Its third stream fits; a fourth passes the token's bound, from wherever.
        assert open_stream(clients[7]) == 200
        resp = clients[5].get(path)  # a refusal is a plain JSON body
        assert resp.status_code == 429 and resp.headers["retry-after"] == "5"
        assert "CLOUDOPS_MAX_STREAMS_PER_TOKEN" in resp.json()["detail"]
        # Past its bound a token is refused before the execution is looked up (no 404 for
        # one that does not exist); a bad token is still told so first.
        assert clients[0].get("/api/executions/ex_no_such/events").status_code == 429
        with httpx.Client(base_url=relay.base_url, timeout=10) as anon:
            bad = {"Authorization": "Bearer not-a-token"}
            assert anon.get("/api/executions/ex_no_such/events", headers=bad).status_code == 401
    finally:
        for cm in opened:
            cm.__exit__(None, None, None)  # type: ignore[attr-defined]
        for c in clients:
            c.close()
    assert refused(relay, "streams_per_token") == 3
    assert refused(relay, "streams_per_address") == 1
    # Closed streams give their slots back.
    with _client(relay, a, "127.0.0.1") as c, c.stream("GET", path) as resp:
        assert resp.status_code == 200


def relay_send_queue_bytes(port: int) -> int:
    """The kernel send queues of the relay's sockets on `port` (/proc/net/tcp tx_queue)."""
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    total += int(fields[4].split(":")[0], 16)
    return total


def test_clients_that_read_nothing_are_dropped_by_the_bytes_they_leave(
    start: StartRelay,
) -> None:
    """Finding 4 at a small scale: 30 SSE streams that never read while an execution prints
    3 MB. Each socket's kernel buffer is fixed, each client is dropped once 4 MiB wait for it
    (well before the 30 s stall limit), and the relay's memory does not follow the output."""
    relay = start()
    n = 30
    with relay.client() as api:
        rss0 = psutil.Process(relay.pid).memory_info().rss
        loud = submit(api, "lines=500000 chunk=2000 interval_ms=20")  # 6 MB in 5 s
        peak_queue = 0
        socks = []
        for _ in range(n):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", relay.port))
            s.sendall(
                f"GET /api/executions/{loud}/events HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {relay.tokens[0]}\r\n\r\n".encode()
            )
            socks.append(s)

        def all_dropped() -> bool:
            nonlocal peak_queue
            peak_queue = max(peak_queue, relay_send_queue_bytes(relay.port))
            return metric(relay, "cloudops_relay_clients_dropped_total", "buffer") >= n

        t0 = time.monotonic()
        wait_for(all_dropped, 20.0, 0.2, "every silent client to be dropped")
        took_s = time.monotonic() - t0
        growth = (psutil.Process(relay.pid).memory_info().rss - rss0) / MIB
        text = api.get("/metrics").text
        for s in socks:
            s.close()
    print(
        f"\n{n} silent clients dropped after {took_s:.1f} s; relay RSS growth {growth:.1f} MiB;"
        f" kernel send queues at most {peak_queue / MIB:.1f} MiB"
    )
    assert took_s < 15
    assert growth < 60, f"relay RSS grew {growth:.0f} MiB"
    # SO_SNDBUF 128 KiB (the kernel doubles it) per socket, not megabytes each.
    assert peak_queue < n * 512 * 1024
    assert f"cloudops_clients_dropped_total {n}" in text


def test_deeply_nested_input_is_a_422(relay: RelayProcess, api: httpx.Client) -> None:
    """Input nested past Python's recursion limit is bad input, not a 500: JSON too deep to
    decode, and JSON that decodes but is too deep to check."""
    for depth in (100_000, 960, 990):
        for opening, closing in (("[", "]"), ('{"a": ', "}")):
            nested = opening * depth + "1" * (opening != "[") + closing * depth
            body = '{"commandType": "playbook", "playbook": ' + nested + "}"
            resp = api.post(
                "/api/executions", content=body, headers={"Content-Type": "application/json"}
            )
            assert resp.status_code == 422, (depth, opening, resp.text)
            assert resp.json()["detail"].startswith(("body: ", "playbook")), resp.text
    relay.stop()
    assert "Traceback" not in relay.logs()
