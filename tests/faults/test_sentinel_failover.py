"""Fault 6: the Redis master SIGKILLed mid-stream behind Sentinel, and the replica promoted.

Real processes on loopback ports (tests/sentinel.py): a master, a replica and three sentinels;
two `cloudops worker`s, a `cloudops relay` and the test's own dispatcher and checker, all
reaching Redis through the sentinels only (CLOUDOPS_REDIS_SENTINELS), the Celery broker
included (kombu's sentinel transport). Five executions print a numbered line every 10 ms; each
has an SSE client on the relay (the CLI's `--remote` follower), a WebSocket subscription on it
(the console's way) and a follower straight on Redis (the CLI's own); one is also followed by
a real `cloudops tail --json` process. Mid-stream the master
is SIGKILLed; once the sentinels promoted the replica, the killed server comes back as its
replica (as systemd would restart it), one execution is cancelled through the relay and two
more are submitted through it.

With CLOUDOPS_REDIS_MIN_REPLICAS=1 nothing may be lost, whether the replica was in step with
the master or cut off from it (its replication link down for a second before the kill): every
execution ends with exactly one execution_complete, ids 1..n, every line exactly once and in
order, in the history and in every follower's stream. With 0 the last events the replica did
not get are allowed to be lost: the test measures how many (README, "High availability").
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from cli.client import RelayClient
from events.wire import RawEvent
from tests.conftest import worker_env
from tests.faults.conftest import Fleet, MakeFleet, hold
from tests.faults.invariants import LEDGER, Tracked, read_history, require
from tests.faults.test_relay_restart import Relay, SseClient, ThreadedClient
from tests.helpers import REPO, cloudops_argv, wait_until
from tests.sentinel import MASTER_NAME, SentinelSet

pytestmark = [pytest.mark.fault, pytest.mark.integration, pytest.mark.sentinel]

EXECUTIONS = 5
LAG_S = 1.0  # how long the replica is cut off before the master dies, in the lagging case


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    s = SentinelSet(tmp_path / "redis").start()
    yield s
    s.close()


class WsClient(ThreadedClient):
    """A WebSocket subscription of one execution, in a thread; should the socket break, it
    subscribes again after the last id it got, as the console does."""

    kind = "WebSocket client"

    def __init__(self, relay: Relay, execution_id: str) -> None:
        self.url = relay.url.replace("http://", "ws://") + "/api/ws"
        self.headers = {"Authorization": f"Bearer {relay.token}"}
        self.reconnects = 0
        super().__init__(execution_id)

    def _read(self) -> None:
        while not self._follow():
            self.reconnects += 1

    def _follow(self) -> bool:
        """One socket; True once execution_complete arrived."""
        after = self.events[-1].id if self.events else 0
        try:
            with connect(self.url, additional_headers=self.headers, open_timeout=5) as ws:
                ws.send(json.dumps({"subscribe": self.execution_id, "after": after}))
                while True:
                    text = str(ws.recv(timeout=60))
                    msg = json.loads(text)
                    assert "error" not in msg, msg
                    if msg.get("executionId") != self.execution_id or "event" not in msg:
                        continue  # a control message
                    self.events.append(RawEvent(msg["id"], msg["event"], text.encode()))
                    if msg["event"] == "execution_complete":
                        return True
        except (ConnectionClosed, OSError):
            return False


class CliTail:
    """`cloudops tail ID --json` on the settings' sentinels: one envelope per line on stdout."""

    def __init__(self, fleet: Fleet, execution_id: str, tmp: Path) -> None:
        self.execution_id = execution_id
        self.out = tmp / f"tail-{execution_id}.out"
        with self.out.open("wb") as out, (tmp / f"tail-{execution_id}.err").open("wb") as err:
            self.proc = subprocess.Popen(
                cloudops_argv("tail", execution_id, "--json"),
                env=worker_env(fleet.settings),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=REPO,
            )

    def reading(self) -> bool:
        """It started (a Python start-up, seconds on a loaded machine) and got an event."""
        assert self.proc.poll() is None, (self.out.with_suffix(".err")).read_text()[-2000:]
        return self.out.stat().st_size > 0

    def join(self, timeout_s: float) -> list[RawEvent]:
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"cloudops tail {self.execution_id} did not end") from None
        events = []
        for line in self.out.read_bytes().splitlines():
            doc = json.loads(line)
            events.append(RawEvent(doc["id"], doc["event"], line))
        return events


class Failover:
    """The scenario of the module docstring, up to the point where everything ended."""

    def __init__(self, sentinels: SentinelSet, fleet: Fleet, tmp: Path) -> None:
        self.sentinels = sentinels
        self.fleet = fleet
        for n in range(2):
            fleet.start_worker(f"w{n}@ha", concurrency=4)
        self.relay = Relay(fleet, tmp)
        self.relay.start()
        self.submitter = RelayClient(self.relay.url, self.relay.token, timeout_s=30)
        self.sse: dict[str, SseClient] = {}
        self.ws: dict[str, WsClient] = {}
        self.tails: list[CliTail] = []
        self.tmp = tmp
        self.failover_s = 0.0

    def submit(self, command: str) -> str:
        return self.submitter.submit({"command": command, "commandType": "script"})

    def start(self, seconds: float) -> Tracked:
        t = self.fleet.chatty(seconds=seconds, interval_ms=10, submit=self.submit)
        self.sse[t.execution_id] = SseClient(self.relay, t.execution_id)
        self.ws[t.execution_id] = WsClient(self.relay, t.execution_id)
        self.fleet.follow(t.execution_id)
        if not self.tails:
            self.tails.append(CliTail(self.fleet, t.execution_id, self.tmp))
        return t

    def kill_master(self, *, lagging: bool) -> None:
        old = self.sentinels.master_port()
        assert old is not None
        replica = next(n for n in self.sentinels.nodes if n.port != old)
        if lagging:
            # The replica stops getting the stream; the master goes on acknowledging writes.
            self.sentinels.partition()
            hold(LAG_S)
        t0 = time.monotonic()
        killed = self.sentinels.kill_master()
        LEDGER.inject("redis master SIGKILL" + (" (replica cut off)" if lagging else ""))
        new = self.sentinels.wait_failover(old)
        self.failover_s = time.monotonic() - t0
        assert new.port == replica.port
        # The killed server restarts (empty) and syncs as the new master's replica.
        self.sentinels.restart(killed)

    def followed(self) -> dict[str, list[RawEvent]]:
        """What each relay client got, by "<kind> <execution id>"."""
        got = {f"SSE {ex}": c.join(60) for ex, c in self.sse.items()}
        got |= {f"cloudops tail {t.execution_id}": t.join(60) for t in self.tails}
        return got | {f"WebSocket {ex}": c.join(60) for ex, c in self.ws.items()}

    def close(self) -> None:
        for t in self.tails:
            if t.proc.poll() is None:
                t.proc.kill()
                t.proc.wait(5)
        self.submitter.close()
        for c in self.sse.values():
            c.client.close()
        self.relay.close()


def run(
    sentinels: SentinelSet, make_fleet: MakeFleet, tmp: Path, *, min_replicas: int, lagging: bool
) -> tuple[Failover, list[Tracked]]:
    fleet = make_fleet(
        None,
        redis_sentinels=sentinels.addresses,
        redis_sentinel_master=MASTER_NAME,
        redis_min_replicas=min_replicas,
    )
    f = Failover(sentinels, fleet, tmp)
    # The first one is cancelled after the failover, however long that took on a loaded
    # machine: it must still be running then (a 10 s run could have completed, and CI saw it).
    runs = [f.start(seconds=60)] + [f.start(seconds=10) for _ in range(EXECUTIONS - 1)]
    fleet.wait_streaming(runs, min_events=40, timeout_s=30)
    wait_until(lambda: all(t.reading() for t in f.tails), 60, 0.1, "cloudops tail to read")
    f.kill_master(lagging=lagging)
    # After the failover: a cancel and new submissions, all through the relay.
    victim = runs[0]
    assert f.submitter.get(victim.execution_id)["status"] == "running"
    f.submitter.cancel(victim.execution_id)
    victim.expect = frozenset({"cancelled"})
    after = [f.start(seconds=1) for _ in range(2)]
    return f, runs + after


@pytest.mark.parametrize("lagging", [False, True], ids=["in-step", "replica-cut-off"])
def test_failover_with_min_replicas_1_loses_and_duplicates_nothing(
    lagging: bool, sentinels: SentinelSet, make_fleet: MakeFleet, tmp_path: Path
) -> None:
    f, tracked = run(sentinels, make_fleet, tmp_path, min_replicas=1, lagging=lagging)
    try:
        # Exactly one execution_complete, ids 1..n, output byte-exact, records terminal, the
        # cancel obeyed, nothing left running, and each follower on Redis (the CLI's own) got
        # the history exactly.
        f.fleet.check(tracked, timeout_s=90)
        # And each SSE and WebSocket client of the relay, and `cloudops tail`, the same.
        for client, got in f.followed().items():
            ex = client.split()[-1]
            history = read_history(f.fleet.checker.client, f.fleet.keys, ex).events
            require(
                [e.data for e in got] == [e.data for e in history],
                f"{client}: got {len(got)} events (ids {_span(got)}), the history has "
                f"{len(history)}",
            )
        reconnected = sum(1 for lf in f.fleet.followers if lf.follower.reconnects)
        require(reconnected > 0, "no follower on Redis saw the failover")
    finally:
        f.close()
    print(f"failover took {f.failover_s:.1f} s; nothing lost with MIN_REPLICAS=1")


def test_failover_with_min_replicas_0_may_lose_the_unreplicated_events(
    sentinels: SentinelSet, make_fleet: MakeFleet, tmp_path: Path
) -> None:
    f, tracked = run(sentinels, make_fleet, tmp_path, min_replicas=0, lagging=True)
    try:
        pending = f.fleet.checker.wait_ended(tracked, 90)
        assert not pending, f"executions that never ended: {pending}"
        lost_events = lost_lines = total = 0
        for t in tracked:
            h = read_history(f.fleet.checker.client, f.fleet.keys, t.execution_id)
            ids = [e.id for e in h.events]
            names = [e.event for e in h.events]
            # What may not happen even so: a duplicate, a reordering, two endings.
            assert ids == sorted(set(ids)), f"{t.execution_id}: ids repeat or go back"
            assert names.count("execution_complete") == 1 and names[-1] == "execution_complete"
            streamed = "".join(
                json.loads(e.data)["payload"]["output"]
                for e in h.events
                if e.event == "execution_output"
                and json.loads(e.data)["payload"]["stream"] == "stdout"
            ).splitlines(keepends=True)
            wrote = t.file_text("stdout").splitlines(keepends=True)
            assert _in_order(streamed, wrote), f"{t.execution_id}: lines out of order or twice"
            lost_events += ids[-1] - len(ids)
            lost_lines += len(wrote) - len(streamed) if "cancelled" not in t.expect else 0
            total += ids[-1]
        f.followed()
    finally:
        f.close()
    print(
        f"MIN_REPLICAS=0, replica cut off {LAG_S:g} s: {lost_events} of {total} events lost "
        f"({lost_lines} output lines); failover took {f.failover_s:.1f} s"
    )


def _span(events: list[RawEvent]) -> str:
    ids = [e.id for e in events]
    return f"{ids[0]}..{ids[-1]}, {len(ids) - len(set(ids))} repeated" if ids else "none"


def _in_order(streamed: list[str], wrote: list[str]) -> bool:
    """Every streamed line is a line the command wrote, each once, in the order written."""
    at = 0
    for line in streamed:
        try:
            at = wrote.index(line, at) + 1
        except ValueError:
            return False
    return True
