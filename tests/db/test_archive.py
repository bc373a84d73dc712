"""The archiver against a real Redis and both databases: what goes in comes back exactly
(record and every envelope, byte for byte, id for id) once Redis forgot it all."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis
from sqlalchemy import Engine, func, select

from events.db.archive import ArchiveOptions, Archiver
from events.db.query import History
from events.db.schema import event_batches, execution_hosts, executions
from events.settings import Settings
from events.vocabulary import Status
from tests.db.checks import assert_batches_exact
from tests.db.publish import Scenario, random_output
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

# Execution id -> (its record as the relay serves it, its history as XRANGE returns it).
Held = dict[str, tuple[dict[str, Any] | None, list[tuple[int, bytes]]]]


@pytest.fixture
def scene(rclient: redis.Redis, settings: Settings) -> Iterator[Scenario]:
    s = Scenario(rclient, settings)
    yield s
    s.close()


def snapshot(scene: Scenario) -> Held:
    scene.flush()
    return {ex: (scene.redis_record(ex), scene.redis_events(ex)) for ex in scene.ids}


def archived_running(
    scene: Scenario, rclient: redis.Redis, engine: Engine, command: str, stdout: str
) -> tuple[str, Archiver]:
    """A running execution that has printed `stdout`, archived once by the archiver returned
    (one that archives running executions at every pass)."""
    ex = scene.command(command, [("stdout", stdout)], end=False)
    scene.flush()
    archiver = Archiver(rclient, scene.keys, engine, ArchiveOptions(running_interval_s=0.0))
    archiver.run_once()
    return ex, archiver


def assert_served_exactly(history: History, want: Held) -> None:
    for ex, (record, events) in want.items():
        got = history.get_record(ex)
        assert got == record, ex
        assert got is not None and record is not None
        assert list(got) == list(record), f"{ex}: key order differs"
        assert history.read_events(ex) == [e for _, e in events], ex
        # Ids: the envelope at position k is id k + 1 (histories published here have no gap).
        assert [i for i, _ in events] == list(range(1, len(events) + 1))


def test_everything_comes_back_exactly_after_redis_forgot_it(
    scene: Scenario, rclient: redis.Redis, engine: Engine
) -> None:
    rng = random.Random(15)
    scene.command("echo hello; echo oops >&2", [("stdout", "hello\n"), ("stderr", "oops\n")])
    scene.command("seq 100000", random_output(rng, 3000))
    scene.command("aws s3 ls s3://logs", random_output(rng, 20), status=Status.FAILED, exit_code=2)
    scene.command("sleep 60", random_output(rng, 30), status=Status.CANCELLED, exit_code=None)
    scene.command("sleep 5", [], status=Status.TIMEOUT, exit_code=None)
    scene.command("cat big", [("stdout", "é" * 30_000 + "\n"), ("stdout", "🙂" * 16_000)])
    scene.playbook(
        "Rotate logs",
        [
            ("list", "List", ["a\n", "b\n"]),
            ("rotate", "Rotate", ["c\n" * 50]),
            ("check", "Check", []),
        ],
    )
    scene.command("tail -f /var/log/syslog", random_output(rng, 40), end=False)  # running
    scene.queued("./later.sh")
    want = snapshot(scene)

    archiver = Archiver(rclient, scene.keys, engine)
    first = archiver.run_once()
    assert first.errors == 0 and first.executions == len(want)
    assert first.events == sum(len(evs) for _, evs in want.values())
    assert first.stored_bytes < first.raw_bytes  # zlib paid
    assert archiver.run_once().executions == 0  # nothing new: nothing written

    assert scene.delete_all() > 0
    history = History(engine)
    assert_served_exactly(history, want)
    assert_batches_exact(engine)
    assert history.read_events(scene.ids[1], after=1000, limit=3) == [
        e for _, e in want[scene.ids[1]][1][1000:1003]
    ]
    assert history.get_record("ex_unknown") is None and history.read_events("ex_unknown") == []


def test_retried_archiving_writes_nothing_twice(
    scene: Scenario, rclient: redis.Redis, engine: Engine
) -> None:
    rng = random.Random(2)
    for i in range(5):
        scene.command(f"job {i}", random_output(rng, 300))
    want = snapshot(scene)
    for _ in range(3):
        Archiver(rclient, scene.keys, engine, ArchiveOptions(batch_events=17)).run_once()
    for ex in want:  # forced, as a retry after a crash would
        Archiver(rclient, scene.keys, engine).archive(ex)
    with engine.connect() as conn:
        stored = conn.execute(
            select(func.sum(event_batches.c.last_id - event_batches.c.first_id + 1))
        ).scalar()
    assert stored == sum(len(evs) for _, evs in want.values())
    assert_batches_exact(engine)
    scene.delete_all()
    assert_served_exactly(History(engine), want)


def test_a_running_execution_is_archived_as_it_goes_then_finished(
    scene: Scenario, rclient: redis.Redis, engine: Engine
) -> None:
    ex, archiver = archived_running(scene, rclient, engine, "deploy --watch", "step 1\n")
    history = History(engine)
    state = history.get_state(ex)
    assert state is not None and state.status == "running" and state.complete_id is None
    assert state.archived_through == 2
    for i in range(2, 6):
        scene.output(ex, f"step {i}\n")
    scene.finish(ex)
    want = snapshot(scene)
    archiver.run_once()
    state = history.get_state(ex)
    assert state is not None and state.status == "completed"
    assert state.complete_id == state.archived_through == len(want[ex][1])
    with engine.connect() as conn:
        done = conn.execute(
            select(executions.c.archive_done).where(executions.c.execution_id == ex)
        ).scalar()
    assert done is True
    scene.delete_all()
    assert_served_exactly(history, want)
    assert_batches_exact(engine)


def test_the_loop_meets_the_contract_deadlines(
    scene: Scenario, rclient: redis.Redis, engine: Engine
) -> None:
    """Ended: in the database within 5 s of execution_complete. Running: its events at least
    every 10 s (the loop's defaults)."""
    archiver = Archiver(rclient, scene.keys, engine)
    stop = threading.Event()
    loop = threading.Thread(target=archiver.run_forever, args=(stop,), daemon=True)
    loop.start()
    try:
        history = History(engine)
        running = scene.command("long", [("stdout", "a\n")], end=False)
        scene.flush()
        wait_until(lambda: (s := history.get_state(running)) and s.archived_through == 2, 10.0)
        scene.output(running, "b\n")
        scene.flush()
        wait_until(lambda: (s := history.get_state(running)) and s.archived_through == 3, 10.0)
        ended = scene.command("short", [("stdout", "done\n")])
        scene.flush()
        wait_until(
            lambda: (s := history.get_state(ended)) and s.complete_id == s.archived_through, 5.0
        )
    finally:
        stop.set()
        loop.join(10.0)
    assert not loop.is_alive()


def test_hosts_of_every_step_are_recorded(
    scene: Scenario, rclient: redis.Redis, engine: Engine
) -> None:
    ex = scene.playbook("Fan", [("a", "A", ["x\n"]), ("b", "B", ["y\n"])])
    scene.flush()
    Archiver(rclient, scene.keys, engine).run_once()
    with engine.connect() as conn:
        hosts = set(
            conn.execute(
                select(execution_hosts.c.host).where(execution_hosts.c.execution_id == ex)
            ).scalars()
        )
    assert hosts == {"w1@test", "w2@test"}


def test_a_hole_in_the_history_is_kept_as_a_hole(
    scene: Scenario, rclient: redis.Redis, engine: Engine
) -> None:
    """Redis lost entries (a restart without persistence): the ids that remain keep theirs."""
    ex = scene.command("gappy", [("stdout", f"{i}\n") for i in range(20)])
    scene.flush()
    rclient.xdel(scene.keys.history(ex), "5-0", "6-0", "13-0")
    want = snapshot(scene)
    Archiver(rclient, scene.keys, engine).run_once()
    scene.delete_all()
    history = History(engine)
    assert history.read_events(ex) == [e for _, e in want[ex][1]]
    assert history.read_events(ex, after=4, limit=2) == [e for i, e in want[ex][1] if i in (7, 8)]
    with engine.connect() as conn:
        ranges = conn.execute(
            select(event_batches.c.first_id, event_batches.c.last_id).order_by(
                event_batches.c.first_id
            )
        ).all()
    assert [tuple(r) for r in ranges] == [(1, 4), (7, 12), (14, 22)]


def test_executions_gone_from_redis_are_left_alone(
    scene: Scenario, rclient: redis.Redis, engine: Engine
) -> None:
    ex, archiver = archived_running(scene, rclient, engine, "x", "1\n")
    scene.delete_all()
    stats = archiver.run_once()
    assert stats.errors == 0 and stats.executions == 0
    state = History(engine).get_state(ex)
    assert state is not None and state.status == "running"


def test_a_history_whose_record_is_gone_is_skipped_not_looped_on(
    scene: Scenario, rclient: redis.Redis, engine: Engine
) -> None:
    ex = scene.command("orphan", [("stdout", f"{i}\n") for i in range(50)])
    scene.flush()
    rclient.delete(scene.keys.record(ex))
    stats = Archiver(rclient, scene.keys, engine, ArchiveOptions(page_events=8)).archive(ex)
    assert stats.errors == 0 and stats.executions == 0
    assert History(engine).get_record(ex) is None


@pytest.mark.parametrize("kind", ["decoded", "fakeredis"])
def test_other_clients_archive_the_same_bytes(
    kind: str, redis_url: str, settings: Settings, engine: Engine
) -> None:
    """A client that decodes responses (str, not bytes), and fakeredis, the in-process Redis
    of `cloudops relay --embedded`."""
    publish_client: redis.Redis = (
        fakeredis.FakeRedis() if kind == "fakeredis" else redis.Redis.from_url(redis_url)
    )
    scene = Scenario(publish_client, settings)
    try:
        rng = random.Random(4)
        scene.command("echo ünïcödé", random_output(rng, 200))
        scene.playbook("P", [("a", "A", ["x\n"])])
        want = snapshot(scene)
        archive_client = (
            publish_client
            if kind == "fakeredis"
            else redis.Redis.from_url(redis_url, decode_responses=True)
        )
        stats = Archiver(archive_client, scene.keys, engine).run_once()
        assert stats.errors == 0 and stats.executions == 2
        scene.delete_all()
        assert_served_exactly(History(engine), want)
    finally:
        scene.close()
