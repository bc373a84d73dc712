"""Helpers for relay tests: a real uvicorn subprocess, an SSE parser, waiting with timeouts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from events.keys import Keys
from events.settings import Settings
from events.subscriber import iter_history
from tests.helpers import connection_env, http_status, wait_until
from tests.helpers import free_port as free_port

REPO = Path(__file__).resolve().parents[2]


def wait_for(
    predicate: Callable[[], Any], timeout_s: float = 10.0, interval_s: float = 0.02, what: str = ""
) -> Any:
    """tests.helpers.wait_until, untyped for predicates that may return None."""
    return wait_until(predicate, timeout_s, interval_s, what)


@dataclass
class RelayProcess:
    """A relay in its own uvicorn process; stdout and stderr go to `log_path`."""

    proc: subprocess.Popen[bytes]
    port: int
    tokens: tuple[str, ...]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/ws"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[0]}"}

    def client(self, **kwargs: Any) -> httpx.Client:
        opts: dict[str, Any] = {"base_url": self.base_url, "timeout": 10.0}
        if self.tokens:
            opts["headers"] = self.headers
        opts.update(kwargs)
        return httpx.Client(**opts)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 8.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_relay(
    settings: Settings,
    log_path: Path,
    *,
    tokens: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    timeout_s: float = 30.0,
    ready_status: tuple[int, ...] = (200,),
) -> RelayProcess:
    """Start uvicorn and wait until /healthz answers with one of `ready_status`."""
    tokens = tuple(tokens)
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CLOUDOPS_", "RELAY_TEST_"))
    }
    full_env.update(connection_env(settings))  # its Redis (or sentinels) and broker
    full_env.update(
        {
            "CLOUDOPS_API_TOKENS": ",".join(tokens),
            # The relay's reaper judges leases: the same TTL as the workers' (worker_env).
            "CLOUDOPS_LEASE_TTL_S": str(settings.lease_ttl_s),
            "PYTHONUNBUFFERED": "1",
        }
    )
    full_env.update(env or {})
    port = port or free_port()
    log = log_path.open("ab")
    cmd = [
        sys.executable,
        "-m",
        "tests.relay.launcher",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--timeout-graceful-shutdown",
        "2",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    relay = RelayProcess(proc, port, tokens, log_path, dict(env or {}))

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"relay exited with {proc.returncode}:\n{relay.logs()}")
        return http_status(f"{relay.base_url}/healthz") in ready_status

    try:
        wait_for(healthy, timeout_s, 0.05, "the relay's /healthz")
    except BaseException:
        relay.stop()
        raise
    return relay


# -- SSE ----------------------------------------------------------------------------------------
@dataclass
class SseMessage:
    kind: str  # "event", "comment" or "retry"
    id: int | None = None
    event: str = "message"
    data: str = ""


def parse_sse(lines: Iterable[str]) -> Iterator[SseMessage]:
    """Messages of an SSE body given line by line (line endings removed)."""
    ev_id: int | None = None
    name = "message"
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield SseMessage("event", ev_id, name, "\n".join(data))
            ev_id, name, data = None, "message", []
        elif line.startswith(":"):
            yield SseMessage("comment", data=line[1:].strip())
        else:
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "id":
                ev_id = int(value)
            elif key == "event":
                name = value
            elif key == "data":
                data.append(value)
            elif key == "retry":
                yield SseMessage("retry", data=value)


def sse_events(lines: Iterable[str]) -> Iterator[SseMessage]:
    return (m for m in parse_sse(lines) if m.kind == "event")


# -- Redis ------------------------------------------------------------------------------------
def history_json(rclient: redis.Redis, keys: Keys, execution_id: str) -> list[str]:
    return [ev.data.decode() for ev in iter_history(rclient, keys, execution_id)]


def output_of(envelopes: Iterable[str]) -> str:
    out = []
    for raw in envelopes:
        env = json.loads(raw)
        if env["event"] == "execution_output":
            out.append(env["payload"]["output"])
    return "".join(out)
