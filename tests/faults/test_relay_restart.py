"""Fault 5: the relay restarted while clients follow executions over SSE.

The relay is the production one (`cloudops relay`), on the fault test's private Redis with the
real Celery dispatcher. Each execution has a client (api.client.RelayClient.follow, the CLI's
remote mode) reading its SSE stream. The relay goes down twice while they read: stopped with
SIGKILL (a crash) and stopped with SIGTERM, each time started again on the same port. Clients
reconnect and resume with Last-Event-ID; each must end with the execution's whole history,
every event once, in order.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cli.client import RelayClient
from events.wire import RawEvent
from tests.conftest import worker_env
from tests.faults.conftest import Fleet, MakeFleet, hold
from tests.faults.invariants import LEDGER, Tracked, require
from tests.helpers import (
    ManagedProcess,
    PrivateRedis,
    cloudops_argv,
    free_port,
    http_status,
    start_process,
    wait_until,
)

pytestmark = [pytest.mark.fault, pytest.mark.integration]

# uvicorn's own default wait for open connections is unbounded; a relay under systemd or
# docker must be gone well before their SIGKILL (90 s and 10 s).
STOP_TIMEOUT_S = 8.0


class Relay:
    """`cloudops relay` on a fixed port, restartable; killed in teardown."""

    def __init__(self, fleet: Fleet, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = "tok-" + secrets.token_hex(12)
        self.env = worker_env(fleet.settings, {"CLOUDOPS_API_TOKENS": self.token})
        self.tmp = tmp
        self.proc: ManagedProcess | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        argv = cloudops_argv("relay", "--host", "127.0.0.1", "--port", str(self.port))
        log = self.tmp / f"relay-{self.starts}.log"
        self.proc = start_process(argv, self.env, log, "relay")

        def healthy() -> bool:
            proc = self.proc
            assert proc is not None and proc.proc.poll() is None, proc.log() if proc else ""
            return http_status(f"{self.url}/healthz") == 200

        wait_until(healthy, 30, 0.05, what="the relay's /healthz")

    def stop(self, sig: signal.Signals, timeout_s: float = STOP_TIMEOUT_S) -> float:
        """Send `sig`; return how long the relay took to exit (SIGKILLed after `timeout_s`)."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.proc.send_signal(sig)
        try:
            self.proc.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return float("inf")
        finally:
            self.proc.kill_tree()
        return time.monotonic() - t0

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill_tree()


class ThreadedClient:
    """A client reading one execution's events in a thread (`_read`), started at once;
    `join` gives them, or raises what failed the thread."""

    kind = "client"

    def __init__(self, execution_id: str) -> None:
        self.execution_id = execution_id
        self.events: list[RawEvent] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        try:
            self._read()
        except BaseException as e:  # reported by join()
            self.error = e

    def join(self, timeout_s: float) -> list[RawEvent]:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"{self.kind} of {self.execution_id} did not end"
        if self.error is not None:
            raise AssertionError(f"{self.kind} of {self.execution_id} failed") from self.error
        return self.events


class SseClient(ThreadedClient):
    """RelayClient.follow in a thread: what a `cloudops tail --remote` would see."""

    kind = "SSE client"

    def __init__(self, relay: Relay, execution_id: str) -> None:
        self.client = RelayClient(relay.url, relay.token, timeout_s=10)
        super().__init__(execution_id)

    def _read(self) -> None:
        for ev in self.client.follow(self.execution_id):
            self.events.append(ev)  # one by one: the test watches the list grow


def test_relay_restarted_while_sse_clients_follow(
    private_redis: PrivateRedis, make_fleet: MakeFleet, tmp_path: Path
) -> None:
    fleet = make_fleet(private_redis.url)
    for n in range(2):
        fleet.start_worker(f"w{n}@faults", concurrency=3)
    relay = Relay(fleet, tmp_path)
    try:
        relay.start()
        submitter = RelayClient(relay.url, relay.token)

        def via_relay(command: str) -> str:
            return submitter.submit({"command": command, "commandType": "script"})

        runs: list[Tracked] = [
            fleet.chatty(seconds=20, interval_ms=5, submit=via_relay) for _ in range(6)
        ]
        clients = [SseClient(relay, t.execution_id) for t in runs]
        wait_until(
            lambda: all(len(c.events) >= 20 for c in clients), 30, what="every client to read"
        )
        exit_s: dict[str, float] = {}
        for sig in (signal.SIGKILL, signal.SIGTERM):
            before = [len(c.events) for c in clients]
            exit_s[sig.name] = relay.stop(sig)
            LEDGER.inject(f"relay restart ({sig.name})")
            hold(1.0)  # down while the executions go on
            relay.start()
            wait_until(
                lambda before=before: all(  # type: ignore[misc]
                    len(c.events) > n for c, n in zip(clients, before, strict=True)
                ),
                30,
                what="every client to read again after the restart",
            )
        followed = {c.execution_id: c.join(60) for c in clients}
        fleet.check(runs, followed=followed, timeout_s=60)
        submitter.close()
        for c in clients:
            c.client.close()
    finally:
        relay.close()
    # A graceful stop must not wait for the SSE streams to end by themselves.
    require(
        exit_s["SIGTERM"] < STOP_TIMEOUT_S,
        f"the relay took {exit_s['SIGTERM']:.1f} s to stop on SIGTERM with SSE clients attached",
    )
