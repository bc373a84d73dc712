"""Subscribers that run in a process of their own, as a client would, so that they do not
share a GIL with what they measure.

    python -m tests.benchmarks.probes follow REDIS_URL KEY_PREFIX EXECUTION_ID [each|after]
    python -m tests.benchmarks.probes naive REDIS_URL CHANNEL

Each prints `ready` once it is subscribed, then one JSON line when done: output bytes received,
events, and `end`, the time.monotonic() at which the last one arrived (CLOCK_MONOTONIC is one
clock for every process of the machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import redis

from events.keys import Keys
from events.subscriber import Follower, as_is
from tests.helpers import REPO

# The naive streamer's end-of-stream message.
NAIVE_END = b"\x00end"


def output_bytes(envelopes: list[str | bytes]) -> int:
    """UTF-8 bytes of output in these execution_output envelopes."""
    return sum(len(json.loads(data)["payload"]["output"].encode()) for data in envelopes)


def follow(
    redis_url: str, key_prefix: str, execution_id: str, parse: str = "after"
) -> dict[str, Any]:
    """parse="each": json-parse every output payload as it arrives (a consumer's work, clocked
    too), "after": once the last event is in (the default, the bus's own figure)."""
    client = redis.Redis.from_url(redis_url)
    nbytes = events = 0
    last_id = 0
    contiguous = True
    follower = Follower(client, Keys(key_prefix), execution_id, poll_interval_s=0.5)
    print("ready", flush=True)
    cpu0 = time.process_time()
    received: list[str | bytes] = []
    for ev in follower:
        events += 1
        contiguous = contiguous and ev.id == last_id + 1
        last_id = ev.id
        if ev.event == "execution_output":
            if parse == "each":
                nbytes += len(json.loads(ev.data)["payload"]["output"].encode())
            else:
                received.append(ev.data)
    # The clock stops when the subscriber has every event, as the relay passes them on; the
    # payloads are parsed and counted after (parsing is the consumer's work, not the bus's).
    end = time.monotonic()
    cpu_s = time.process_time() - cpu0
    nbytes += output_bytes(received)
    return {"cpu_s": cpu_s, "bytes": nbytes, "events": events, "contiguous": contiguous, "end": end}


def naive(redis_url: str, channel: str) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url)
    pubsub = client.pubsub(push_handler_func=as_is)  # type: ignore[no-untyped-call]
    pubsub.subscribe(channel)
    while (msg := pubsub.get_message(timeout=5.0)) is None or msg["type"] != "subscribe":
        pass
    print("ready", flush=True)
    nbytes = messages = 0
    while True:
        msg = pubsub.get_message(timeout=30.0)
        if msg is None:
            raise TimeoutError("the naive streamer went quiet")
        if msg["type"] != "message":
            continue
        if msg["data"] == NAIVE_END:
            break
        nbytes += len(msg["data"])
        messages += 1
    end = time.monotonic()
    pubsub.close()
    return {"bytes": nbytes, "events": messages, "contiguous": True, "end": end}


class Probe:
    """A client subprocess (a module of this package run with -m): started, waited on until it
    says `ready`, then read for its JSON result. Killed on exit if still running."""

    def __init__(self, *args: str, module: str = "tests.benchmarks.probes") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
            cwd=REPO,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.kill()
            raise RuntimeError(f"probe {module} {args[0]} did not start: {line!r}")

    def result(self, timeout_s: float = 120.0, stdin: str | None = None) -> dict[str, Any]:
        out, _ = self.proc.communicate(stdin, timeout=timeout_s)
        if self.proc.returncode != 0:
            raise RuntimeError(f"probe failed with exit code {self.proc.returncode}")
        data: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return data

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()

    def __enter__(self) -> Probe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def main(argv: list[str]) -> None:
    if argv[:1] == ["follow"] and len(argv) in (4, 5):
        result = follow(*argv[1:])
    elif argv[:1] == ["naive"] and len(argv) == 3:
        result = naive(*argv[1:])
    else:
        sys.exit(__doc__)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
