"""The rules that embedded mode once had copies of, checked on both: the same code embedded (an
in-process Redis, tasks in threads) and on a fleet (a real Redis, a real `cloudops worker`).

The output cap and `truncated`, `droppedBytes` after Redis was unreachable, and
`max_concurrent` behave the same way in both, because both are the same publisher, records and
slots (ARCHITECTURE.md).
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli.wiring import Local, embedded
from events.models import parse_time
from events.records import ExecutionRecord
from events.settings import Settings
from events.subscriber import Follower
from events.wire import RawEvent
from tests.conftest import StartWorker
from tests.helpers import CeleryDispatcher, PrivateRedis, payloads, wait_until

pytestmark = pytest.mark.integration


@dataclass
class Mode:
    """One way to run executions, as a test drives it."""

    name: str
    submit_command: Callable[..., str]
    submit_playbook: Callable[..., str]
    cancel: Callable[[str], None]
    follow: Callable[[str], list[RawEvent]]
    record: Callable[[str], ExecutionRecord | None]
    # Make Redis unreachable for the executions' side, then reachable again.
    cut: Callable[[], None]
    restore: Callable[[], None]
    # How many events an execution's history holds.
    history_len: Callable[[str], int]


def _follow(local_redis: Any, keys: Any) -> Callable[[str], list[RawEvent]]:
    def follow(ex: str) -> list[RawEvent]:
        events = list(Follower(local_redis, keys, ex, idle_timeout_s=60))
        assert events and events[-1].terminal, [e.event for e in events][-3:]
        return events

    return follow


def _embedded_mode(settings: Settings) -> Iterator[Mode]:
    parts: Local = embedded(settings.with_(redis_url=None))
    rt, d = parts.runtime, parts.dispatcher
    server = parts.server
    assert server is not None

    def cut() -> None:
        server.connected = False

    def restore() -> None:
        server.connected = True

    yield Mode(
        "embedded",
        d.submit_command,
        d.submit_playbook,
        d.cancel,
        _follow(rt.redis, rt.keys),
        rt.records.get,
        cut,
        restore,
        lambda ex: int(rt.redis.xlen(rt.keys.history(ex))),
    )
    rt.publisher.close(timeout_s=5)


def _fleet_mode(
    settings: Settings, private_redis: PrivateRedis, start_worker: StartWorker
) -> Iterator[Mode]:
    fleet_settings = settings.with_(redis_url=private_redis.url)
    start_worker(
        concurrency=2,
        env={
            "CLOUDOPS_REDIS_URL": private_redis.url,
            "CLOUDOPS_MAX_OUTPUT_BYTES": str(settings.max_output_bytes),
            "CLOUDOPS_PUBLISH_BUFFER_BYTES": str(settings.publish_buffer_bytes),
            "CLOUDOPS_LEASE_TTL_S": str(settings.lease_ttl_s),
        },
    )
    d = CeleryDispatcher(fleet_settings)
    redis_pid = private_redis.proc.pid if private_redis.proc else 0

    def cut() -> None:
        os.kill(redis_pid, signal.SIGSTOP)  # frozen: every client waits, none is refused

    def restore() -> None:
        os.kill(redis_pid, signal.SIGCONT)

    yield Mode(
        "fleet",
        d.submit_command,
        d.submit_playbook,
        d.cancel,
        _follow(d.rt.redis, d.rt.keys),
        d.rt.records.get,
        cut,
        restore,
        lambda ex: int(d.rt.redis.xlen(d.rt.keys.history(ex))),
    )
    d.rt.publisher.close(timeout_s=5)


@pytest.fixture(params=["embedded", "fleet"])
def mode_factory(
    request: pytest.FixtureRequest,
    settings: Settings,
    tmp_path: Path,
    start_worker: StartWorker,
) -> Iterator[Callable[..., Mode]]:
    """mode(**settings changes): the executions' side, embedded or on a real worker."""
    made: list[Iterator[Mode]] = []
    redis = PrivateRedis(tmp_path, persistent=False)

    def make(**changes: Any) -> Mode:
        s = settings.with_(**changes)
        if request.param == "embedded":
            gen = _embedded_mode(s)
        else:
            redis.start()
            gen = _fleet_mode(s, redis, start_worker)
        made.append(gen)
        return next(gen)

    yield make
    for gen in made:
        for _ in gen:
            pass
    redis.kill()


def test_output_cap_marks_the_crossing_chunk_and_drops_the_rest(
    mode_factory: Callable[..., Mode],
) -> None:
    mode = mode_factory(max_output_bytes=6000)
    # 60 chunks of ~1 KiB, 50 ms apart: one per event, each ~1.2 KB as an envelope.
    ex = mode.submit_command(
        "for i in $(seq 1 60); do printf '%04d %01000d\\n' $i 0; sleep 0.05; done; echo end",
        "script",
    )
    events = mode.follow(ex)
    outs = payloads(events, "execution_output")
    marks = [p.get("truncated") for p in outs]
    assert marks[-1] is True and marks[:-1] == [None] * (len(outs) - 1)
    kept = "".join(p["output"] for p in outs)
    assert kept.startswith("0001 ") and "end" not in kept and len(outs) < 10
    assert sum(len(e.data) for e in events if e.event == "execution_output") <= 6000 + 1300
    done = payloads(events)[-1]
    assert done["status"] == "completed"  # the command ran to its end; only output was dropped
    rec = mode.record(ex)
    assert rec is not None and rec.output_truncated is True


def test_output_dropped_while_redis_is_unreachable_is_counted(
    mode_factory: Callable[..., Mode], tmp_path: Path
) -> None:
    # A lease that outlives the freeze: this test is about output, not lost workers.
    mode = mode_factory(publish_buffer_bytes=4096, lease_ttl_s=60)
    go, printed, back = tmp_path / "go", tmp_path / "printed", tmp_path / "back"
    # 2 MiB while Redis is away: more than the command's pipe holds, so by the time it is
    # printed most of it was read, coalesced and offered to the publisher, whose 4 KiB
    # buffer cannot take it. The newline after a pause is a chunk of its own, so the buffer
    # surely holds something (every chunk of the burst may be over 4 KiB, all dropped).
    size = 2 * 1024 * 1024
    ex = mode.submit_command(
        f"echo ready; while [ ! -e {go} ]; do sleep 0.02; done; "
        f"head -c {size} /dev/zero | tr '\\0' x; sleep 0.1; echo; touch {printed}; "
        f"while [ ! -e {back} ]; do sleep 0.02; done; echo back",
        "script",
    )
    wait_until(lambda: (rec := mode.record(ex)) is not None and rec.status == "running", 30)
    wait_until(lambda: mode.history_len(ex) >= 2, 30, what="the first output")
    before = mode.history_len(ex)
    mode.cut()
    try:
        go.touch()
        wait_until(printed.exists, 60, what="the command to print while Redis is away")
    finally:
        mode.restore()
    # "back" must find room in the publisher's buffer: wait until what it held while Redis
    # was away is in the history and the history stops growing (on a loaded machine the
    # frozen Redis takes a while to catch up). If nothing new came, the held batch may have
    # been given up: then the history must stay still for longer than the publisher's
    # longest retry pause (1 s).
    last = {"n": before, "still": 0}

    def drained() -> bool:
        n = mode.history_len(ex)
        last["still"] = last["still"] + 1 if n == last["n"] else 0
        last["n"] = n
        return (n > before and last["still"] >= 2) or last["still"] >= 10

    wait_until(drained, 30, 0.2, what="the publisher to drain its buffer")
    back.touch()
    events = mode.follow(ex)
    outs = payloads(events, "execution_output")
    kept = "".join(p["output"] for p in outs)
    dropped = sum(p.get("droppedBytes", 0) for p in outs)
    assert dropped > 0, "the buffer never overflowed: the test proves nothing"
    assert outs[-1]["output"].endswith("back\n")
    # Every byte the command wrote is either kept or counted, exactly.
    wrote = "ready\n" + "x" * size + "\n" + "back\n"
    assert len(kept.encode()) + dropped == len(wrote.encode())
    assert payloads(events)[-1]["status"] == "completed"


def test_max_concurrent_runs_one_at_a_time_in_order(mode_factory: Callable[..., Mode]) -> None:
    mode = mode_factory()
    deploy: dict[str, Any] = {
        "name": "Deploy once",
        "max_concurrent": 1,
        "steps": [{"command": "sleep 0.2"}, {"command": "echo done"}],
    }
    ids = [mode.submit_playbook(deploy) for _ in range(4)]
    mode.cancel(ids[-1])  # a waiting run gives up its place
    spans = []
    for ex in ids[:-1]:
        events = mode.follow(ex)
        assert payloads(events)[-1]["status"] == "completed"
        started = payloads(events, "execution_started")[0]["startedAt"]
        spans.append((parse_time(started), parse_time(payloads(events)[-1]["completedAt"])))
    for (_, end), (start, _) in itertools.pairwise(sorted(spans)):
        assert start >= end
    assert [e.event for e in mode.follow(ids[-1])] == ["execution_cancelled", "execution_complete"]
