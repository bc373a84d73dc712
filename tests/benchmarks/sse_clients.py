"""Many SSE clients of the relay in one asyncio process of their own (so that they do not
share a GIL with what they measure), over plain sockets: HTTP/1.1, chunked bodies.

    python -m tests.benchmarks.sse_clients follow HOST PORT TOKEN PATH N
    python -m tests.benchmarks.sse_clients idle HOST PORT TOKEN PATH N

Both print `ready` once all N streams are open (response headers received). `follow` then
reads every stream to its end (the relay closes it after execution_complete) and prints one
JSON line: per-stream output digests, ids contiguous or not, body bytes, write-to-client
latency of every chatty line (see chatty.py). `idle` holds the N streams open until a line
arrives on stdin, then closes them and prints how many opens were refused with HTTP 503.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sys
import time
from typing import Any

from tests.benchmarks.core import percentile
from tests.benchmarks.latency import LineLatency

_MAX_SAMPLES = 20_000


class Stream:
    """One SSE response: events parsed out of the body as it arrives."""

    def __init__(self) -> None:
        self._buf = b""
        self.latency = LineLatency()
        self.digest = hashlib.sha256()
        self.output_bytes = 0
        self.body_bytes = 0
        self.last_id = 0
        self.contiguous = True
        self.complete = False
        self.first_ns: int | None = None
        self.last_ns = 0

    def feed(self, data: bytes, arrived_ns: int) -> None:
        self.body_bytes += len(data)
        self._buf += data
        while (end := self._buf.find(b"\n\n")) >= 0:
            block, self._buf = self._buf[:end], self._buf[end + 2 :]
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    self._event(json.loads(line[6:]), arrived_ns)

    def _event(self, env: dict[str, Any], arrived_ns: int) -> None:
        self.contiguous = self.contiguous and env["id"] == self.last_id + 1
        self.last_id = env["id"]
        if env["event"] == "execution_output":
            text: str = env["payload"]["output"]
            raw = text.encode()
            self.digest.update(raw)
            self.output_bytes += len(raw)
            self.latency.feed(text, arrived_ns)
            if self.first_ns is None:
                self.first_ns = arrived_ns
            self.last_ns = arrived_ns
        elif env["event"] == "execution_complete":
            self.complete = True


class Busy(RuntimeError):
    """HTTP 503: the relay refused the stream for now."""


# HTTP 503 answers, retried: the relay refuses a stream with "Too many connections" when its
# Redis connection pool (redis-py's asyncio default, 100) is exhausted, for example by the
# history reads of many streams at once. Counted and reported, not hidden.
refused_503 = 0


async def open_stream(
    host: str, port: int, token: str, path: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    global refused_503
    for attempt in range(50):
        try:
            return await _open_once(host, port, token, path)
        except Busy:
            refused_503 += 1
            await asyncio.sleep(0.02 * (attempt + 1))
    raise RuntimeError(f"{path}: HTTP 503 fifty times")


async def _open_once(
    host: str, port: int, token: str, path: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    )
    writer.write(request.encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    if status != b"200":
        writer.close()
        if status == b"503":
            raise Busy(path)
        raise RuntimeError(f"{path}: HTTP {status.decode()}")
    if b"transfer-encoding: chunked" not in head.lower():
        raise RuntimeError(f"{path}: expected a chunked body")
    return reader, writer


async def read_body(reader: asyncio.StreamReader, stream: Stream) -> None:
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        if size == 0:
            return
        data = await reader.readexactly(size + 2)
        stream.feed(data[:-2], time.time_ns())


async def open_streams(
    host: str, port: int, token: str, path: str, n: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    # In batches, so that the opens themselves do not exhaust the relay's Redis pool.
    conns = []
    for start in range(0, n, 50):
        batch = min(50, n - start)
        conns += await asyncio.gather(*(open_stream(host, port, token, path) for _ in range(batch)))
    return conns


async def follow(host: str, port: int, token: str, path: str, n: int) -> dict[str, Any]:
    conns = await open_streams(host, port, token, path, n)
    print("ready", flush=True)
    streams = [Stream() for _ in conns]
    await asyncio.gather(*(read_body(r, s) for (r, _), s in zip(conns, streams, strict=True)))
    for _, writer in conns:
        writer.close()
    samples = [x for s in streams for x in s.latency.samples_ms]
    firsts = [s.first_ns for s in streams if s.first_ns is not None]
    thinned = samples if len(samples) <= _MAX_SAMPLES else random.sample(samples, _MAX_SAMPLES)
    return {
        "streams": n,
        "complete": sum(s.complete for s in streams),
        "contiguous": all(s.contiguous for s in streams),
        "digests": sorted({s.digest.hexdigest() for s in streams}),
        "outputBytes": sorted({s.output_bytes for s in streams}),
        "bodyBytes": sum(s.body_bytes for s in streams),
        "firstNs": min(firsts) if firsts else 0,
        "lastNs": max(s.last_ns for s in streams),
        "lines": len(samples),
        "refused503": refused_503,
        "p50": percentile(samples, 50),
        "p99": percentile(samples, 99),
        "samples": thinned,
    }


async def idle(host: str, port: int, token: str, path: str, n: int) -> dict[str, Any]:
    conns = await open_streams(host, port, token, path, n)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for _, writer in conns:
        writer.close()
    return {"streams": len(conns), "refused503": refused_503}


def main(argv: list[str]) -> None:
    if len(argv) != 6 or argv[0] not in ("follow", "idle"):
        sys.exit(__doc__)
    mode, host, port, token, path, n = argv
    run = follow if mode == "follow" else idle
    result = asyncio.run(run(host, int(port), token, path, int(n)))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
