"""Fixtures of the fault suite: private redis-servers to break, fleets of real workers on them,
live followers, and the summary line at the end of the run.

Every fault test runs on a redis-server of its own (a fault on the shared Redis would hit the
other suites), started with AOF on every write so that a restart keeps what was acknowledged.
Every process a test starts is killed in teardown: workers (whole process group), redis-servers,
and, found by the test's marker in /proc, any command a fault could have orphaned.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from events.clients import redis_for
from events.keys import Keys
from events.models import ExecutionOptions
from events.settings import Settings
from events.subscriber import Follower
from events.wire import RawEvent
from tests.conftest import worker_env
from tests.faults.invariants import LEDGER, Checker, KnownBug, Tracked, kill_marked
from tests.helpers import (
    CeleryDispatcher,
    ManagedProcess,
    PrivateRedis,
    ThreadFollower,
    cloudops_argv,
    start_process,
    wait_until,
)

CHATTY = Path(__file__).with_name("chatty.py")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A test that passed except for violations by known, reported bugs is an xfail naming
    them: visible in every run's summary, never a silent pass."""
    if call.when == "setup":
        item.stash[_KNOWN_BEFORE] = len(LEDGER.known)
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if call.when == "call" and report.passed:
        seen = LEDGER.known[item.stash.get(_KNOWN_BEFORE, len(LEDGER.known)) :]
        if seen:
            reasons = sorted({bug.reason for bug, _ in seen})
            report.outcome = "skipped"
            report.wasxfail = f"{len(seen)} violation(s) by known bugs: " + " | ".join(reasons)


_KNOWN_BEFORE = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if LEDGER.used:
        terminalreporter.write_sep("-", "fault suite")
        terminalreporter.write_line(LEDGER.summary())
        for line in LEDGER.details():
            terminalreporter.write_line(line)


# -- a private Redis --------------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.kill()


# -- live followers ---------------------------------------------------------------------------


def live_follower(client: redis.Redis, keys: Keys, execution_id: str) -> ThreadFollower:
    """A Follower in a thread on a Redis client of its own (closed with it), keeping what it
    yields."""
    follower = Follower(client, keys, execution_id, poll_interval_s=0.2)
    return ThreadFollower(follower, on_close=client.close)


# -- a fleet of real workers on one Redis ---------------------------------------------------------


@dataclass
class Fleet:
    """Workers, a dispatcher, followers and the checker, all on one Redis and key prefix."""

    settings: Settings
    tmp: Path
    marker: str
    dispatcher: CeleryDispatcher
    checker: Checker
    workers: list[ManagedProcess] = field(default_factory=list)
    followers: list[ThreadFollower] = field(default_factory=list)
    tracked: list[Tracked] = field(default_factory=list)

    @property
    def keys(self) -> Keys:
        return self.dispatcher.rt.keys

    def start_worker(
        self,
        hostname: str,
        *,
        concurrency: int = 2,
        wait_ready: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> ManagedProcess:
        args = ["worker", "--concurrency", str(concurrency), "--hostname", hostname]
        extra = {
            # A warm shutdown in teardown must not wait for the production 300 s.
            "CLOUDOPS_SHUTDOWN_GRACE_S": "2",
            "CLOUDOPS_HEARTBEAT_INTERVAL_S": str(self.settings.heartbeat_interval_s),
            # This test's own record of running commands (worker/leftovers.py).
            "CLOUDOPS_STATE_DIR": str(self.tmp / "state"),
            **(env or {}),
        }
        log_path = self.tmp / f"worker-{hostname.replace('@', '_')}-{len(self.workers)}.log"
        proc = start_process(
            cloudops_argv(*args), worker_env(self.settings, extra), log_path, hostname
        )
        self.workers.append(proc)
        if wait_ready:
            proc.wait_for_log(" ready.", timeout_s=120)
        return proc

    def chatty(
        self,
        *,
        seconds: float,
        interval_ms: float = 10.0,
        burst: int = 1,
        stderr_every: int = 10,
        go: Path | None = None,
        ignore_term: bool = False,
        expect: frozenset[str] = frozenset({"completed"}),
        error_contains: str | None = None,
        submit: Callable[[str], str] | None = None,
    ) -> Tracked:
        """Submit one tests/faults/chatty.py execution (through `submit(command)` if given)
        and track it for the checker."""
        n = len(self.tracked)
        marker = f"{self.marker}.{n}"
        out_dir = self.tmp / f"ex{n}"
        out_dir.mkdir()
        argv = [sys.executable, "-u", str(CHATTY), marker, str(out_dir)]
        argv += ["--seconds", f"{seconds:g}", "--interval-ms", f"{interval_ms:g}"]
        argv += ["--burst", str(burst), "--stderr-every", str(stderr_every)]
        if go is not None:
            argv += ["--go", str(go)]
        if ignore_term:
            argv.append("--ignore-term")
        command = shlex.join(argv)
        if submit is not None:
            ex = submit(command)
        else:
            ex = self.dispatcher.submit_command(command, "script", options=ExecutionOptions())
        t = Tracked(ex, out_dir, marker, expect, error_contains)
        self.tracked.append(t)
        return t

    def follow(self, execution_id: str) -> ThreadFollower:
        # Its own client, straight to the Redis or through the sentinels as the CLI's would.
        client = redis_for(self.settings, client_name=f"{self.settings.key_prefix}-follower")
        f = live_follower(client, self.keys, execution_id)
        self.followers.append(f)
        return f

    def records_running_on(self, hostname: str) -> list[str]:
        rec = self.dispatcher.rt.records
        return [
            t.execution_id
            for t in self.tracked
            if (r := rec.get(t.execution_id)) is not None
            and r.status == "running"
            and r.worker == hostname
        ]

    def history_len(self, execution_id: str) -> int:
        try:
            return int(self.dispatcher.rt.redis.xlen(self.keys.history(execution_id)))
        except redis.RedisError:
            return 0

    def wait_streaming(self, tracked: list[Tracked], min_events: int, timeout_s: float) -> None:
        """Until every execution has at least `min_events` events: the fault lands mid-stream."""
        wait_until(
            lambda: all(self.history_len(t.execution_id) >= min_events for t in tracked),
            timeout_s,
            0.05,
            what=f"{len(tracked)} executions to have {min_events} events each",
        )

    def check(
        self,
        tracked: list[Tracked] | None = None,
        *,
        followed: Mapping[str, Sequence[RawEvent]] | None = None,
        timeout_s: float = 90,
        known: Sequence[KnownBug] = (),
    ) -> None:
        """The shared invariants over `tracked` (default: all), with what the live followers
        (and any other readers in `followed`) got."""
        todo = self.tracked if tracked is None else tracked
        # One deadline for everything: a follower of an execution that never ends (a bug the
        # checks then report) must not hold the test for a timeout of its own.
        deadline = time.monotonic() + timeout_s
        self.checker.wait_ended(todo, timeout_s)
        got: dict[str, Sequence[RawEvent]] = dict(followed or {})
        for f in self.followers:
            got[f.follower.execution_id] = f.join(max(1.0, deadline - time.monotonic()))
        self.checker.check(todo, marker=self.marker, followed=got, timeout_s=1.0, known=known)

    def close(self) -> None:
        for f in self.followers:
            f.close()
        for w in self.workers:
            w.stop(timeout_s=8)
        kill_marked(self.marker)
        with contextlib.suppress(Exception):
            self.dispatcher.rt.publisher.close(timeout_s=2)
        with contextlib.suppress(Exception):
            self.dispatcher.app.close()
        self.dispatcher.rt.redis.close()
        self.checker.client.close()


MakeFleet = Callable[..., Fleet]


@pytest.fixture
def make_fleet(tmp_path: Path, key_prefix: str) -> Iterator[MakeFleet]:
    """make_fleet(redis_url, **settings) -> a Fleet; everything it started is stopped after.
    With `redis_url=None` the settings must name sentinels (`redis_sentinels=...`)."""
    made: list[Fleet] = []

    def make(url: str | None, **overrides: object) -> Fleet:
        values: dict[str, object] = {
            "redis_url": url,
            "key_prefix": key_prefix,
            "kill_grace_s": 2.0,
            "lease_ttl_s": 8,
        }
        values.update(overrides)
        settings = Settings(**values)  # type: ignore[arg-type]
        marker = f"fault{uuid.uuid4().hex[:12]}"
        checker = Checker(redis_for(settings), Keys(key_prefix))
        fleet = Fleet(settings, tmp_path, marker, CeleryDispatcher(settings), checker)
        made.append(fleet)
        return fleet

    yield make
    for fleet in made:
        fleet.close()


def hold(seconds: float) -> None:
    """Keep a fault in place for its stated duration (the one kind of sleep a test may do)."""
    time.sleep(seconds)
