"""events/lua/fan_out.lua on a real Redis: `parallel`, `max_failures`, each host's end and
claim counted once, and exactly one caller told that the step is over."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from events.fan_out import Claim, FanOutStore, Next
from events.keys import Keys
from events.record_store import RecordStore
from events.records import HostRun
from events.settings import Settings
from events.vocabulary import CommandType, HostStatus, RecordField

EX = "ex_fan"


@pytest.fixture
def store(rclient: redis.Redis, settings: Settings) -> Iterator[FanOutStore]:
    keys = Keys(settings.key_prefix)
    RecordStore(rclient, keys, settings).create(
        EX,
        command="x",
        command_type=CommandType.PLAYBOOK,
        options={},
        queued_at="now",
        spec={"name": "fan"},
    )
    yield FanOutStore(rclient, keys, settings)


def run(host: str, status: HostStatus = HostStatus.COMPLETED) -> HostRun:
    return HostRun(host=host, status=status, duration_ms=1)


def test_parallel_takes_the_next_host_as_each_ends(store: FanOutStore) -> None:
    assert store.init(EX, 1, ["a", "b", "c", "d"], parallel=2, max_failures=None, offline=[]) == (
        Next(["a", "b"], [], False)
    )
    assert store.started_hosts(EX, 1) == ["a", "b"]
    assert store.end(EX, 1, run("b"), started=True) == Next(["c"], [], False)
    assert store.end(EX, 1, run("b"), started=True) == Next([], [], False)  # counted once
    assert store.end(EX, 1, run("a", HostStatus.FAILED), started=True) == Next(["d"], [], False)
    assert store.end(EX, 1, run("c"), started=True) == Next([], [], False)
    assert store.end(EX, 1, run("d"), started=True) == Next([], [], True)
    assert {h: r.status for h, r in store.results(EX, 1).items()} == {
        "a": "failed",
        "b": "completed",
        "c": "completed",
        "d": "completed",
    }


def test_max_failures_skips_the_hosts_not_started(store: FanOutStore) -> None:
    assert store.init(EX, 2, ["a", "b", "c"], parallel=1, max_failures=0, offline=[]).start == ["a"]
    nxt = store.end(EX, 2, run("a", HostStatus.FAILED), started=True)
    assert nxt == Next([], ["b", "c"], False)
    assert store.end(EX, 2, run("b", HostStatus.SKIPPED), started=False) == Next([], [], False)
    assert store.end(EX, 2, run("c", HostStatus.SKIPPED), started=False) == Next([], [], True)


def test_offline_hosts_count_as_failed_and_may_end_the_step(store: FanOutStore) -> None:
    gone = [run("x", HostStatus.FAILED)]
    assert store.init(EX, 3, [], parallel=None, max_failures=None, offline=gone) == Next(
        [], [], True
    )
    assert store.results(EX, 3)["x"].status is HostStatus.FAILED
    # An offline host beyond max_failures skips every online one.
    assert store.init(EX, 4, ["a"], parallel=None, max_failures=0, offline=gone) == Next(
        [], ["a"], False
    )


def test_a_host_runs_once_and_not_after_a_cancel(
    store: FanOutStore, rclient: redis.Redis, settings: Settings
) -> None:
    store.init(EX, 5, ["a", "b"], parallel=None, max_failures=None, offline=[])
    assert rclient.hget(Keys(settings.key_prefix).record(EX), RecordField.FAN_OUT) == b"5"
    assert not store.host_lease_alive(EX, 5, "a")
    claim = store.claim(EX, 5, "a", "t1")
    assert claim.outcome == "ok" and claim.wave == 2
    assert claim.spec is not None and json.loads(claim.spec) == {"name": "fan"}
    assert store.host_lease_alive(EX, 5, "a")  # renewed by the claim
    assert store.claim(EX, 5, "a", "t2") == Claim("ended", None, 0)  # a duplicate delivery
    RecordStore(rclient, Keys(settings.key_prefix), settings).request_cancel(EX)
    assert store.claim(EX, 5, "b", "t3").outcome == "cancel"
    assert store.take_loss(EX, 5, "a") and not store.take_loss(EX, 5, "a")
    store.end(EX, 5, run("a"), started=True)
    assert store.end(EX, 5, run("b", HostStatus.CANCELLED), started=True).last
    assert rclient.hget(Keys(settings.key_prefix).record(EX), RecordField.FAN_OUT) is None


def test_the_first_hosts_start_together(store: FanOutStore) -> None:
    """The barrier of a step's first wave: waiters arrived before the last all go when it
    arrives; a wave short of a host lets each go after its timeout; a run delivered again
    goes at once."""
    store.init(EX, 2, ["a", "b", "c", "d"], parallel=3, max_failures=None, offline=[])
    assert [store.claim(EX, 2, h, h).wave for h in "abcd"] == [3, 3, 3, 0]
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda: results.append(store.gather(EX, 2, 3, 5.0)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:  # both wait: the third host is not ready yet
        t.join(0.2)
        assert t.is_alive()
    t0 = time.monotonic()
    assert store.gather(EX, 2, 3, 5.0) is True  # the last: it releases the others
    for t in threads:
        t.join(5.0)
    assert results == [True, True] and time.monotonic() - t0 < 2.0
    assert store.gather(EX, 2, 3, 5.0) is False  # delivered again: goes at once
    # A wave of two where one never comes: the other goes after its timeout.
    store.init(EX, 3, ["a", "b"], parallel=None, max_failures=None, offline=[])
    assert store.claim(EX, 3, "b", "t").wave == 2
    t0 = time.monotonic()
    assert store.gather(EX, 3, 2, 0.3) is False
    assert time.monotonic() - t0 >= 0.29
