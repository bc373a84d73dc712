"""Exactly once under crashes and concurrency: an archiver SIGKILLed at random points (mostly
inside a transaction: it archives in tiny ones), then run again; and three archivers at once.
Checked in the database itself (tests/db/checks.py) and byte for byte against Redis."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine, func, select, text

from events.db.query import History
from events.db.schema import event_batches
from events.settings import Settings
from tests.db.checks import assert_batches_exact
from tests.db.publish import Scenario, random_output
from tests.helpers import REPO, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.fault]

EXECUTIONS = 12
CHUNKS = 300  # output events per execution: ~3,600 events in all

# Execution id -> its history as XRANGE returns it.
Histories = dict[str, list[tuple[int, bytes]]]


@pytest.fixture
def published(rclient: redis.Redis, settings: Settings) -> Iterator[tuple[Scenario, Histories]]:
    scene = Scenario(rclient, settings)
    rng = random.Random(1515)
    for i in range(EXECUTIONS):
        scene.command(f"./job-{i}.sh", random_output(rng, CHUNKS))
    scene.flush()
    yield scene, {ex: scene.redis_events(ex) for ex in scene.ids}
    scene.close()


def start_archiver(settings: Settings, db_url: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "tests.db.archive_child"]
    argv += [settings.redis_url or "", settings.key_prefix, db_url]
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def stored_events(engine: Engine) -> int:
    with engine.connect() as conn:
        total = conn.execute(
            select(
                func.coalesce(func.sum(event_batches.c.last_id - event_batches.c.first_id + 1), 0)
            )
        ).scalar_one()
    return int(total)


def in_transaction(engine: Engine) -> bool:
    """PostgreSQL: the archiver's connection is inside a transaction right now."""
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as conn:
        n = conn.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
            )
        ).scalar_one()
    return bool(n)


def finish(proc: subprocess.Popen[bytes]) -> dict[str, int]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()[-3000:]
    stats: dict[str, int] = json.loads(out.decode().strip().splitlines()[-1])
    return stats


def assert_all_there(engine: Engine, scene: Scenario, want: Histories) -> None:
    through = assert_batches_exact(engine)
    assert through == {ex: len(evs) for ex, evs in want.items()}
    scene.delete_all()
    history = History(engine)
    for ex, events in want.items():
        assert history.read_events(ex) == [e for _, e in events], ex


def test_an_archiver_killed_mid_batch_loses_and_duplicates_nothing(
    published: tuple[Scenario, Histories], settings: Settings, db_url: str, engine: Engine
) -> None:
    scene, want = published
    total = sum(len(evs) for evs in want.values())
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    kills = in_tx = 0
    for _ in range(5):
        done = stored_events(engine)
        if done >= total:
            break
        target = done + rng.randint(1, max(1, (total - done) // 3))
        proc = start_archiver(settings, db_url)
        wait_until(
            lambda: proc.poll() is not None or stored_events(engine) >= target,  # noqa: B023
            60.0,
            0.002,
            what="the archiver's progress",
        )
        if proc.poll() is None:
            in_tx += in_transaction(engine)
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=30)
        # What the killed one committed is whole: contiguous from 1, no overlap.
        assert_batches_exact(engine)
    assert kills >= 3, f"only {kills} kills landed while archiving (seed {seed})"
    if engine.dialect.name == "postgresql":
        assert in_tx >= 1, "no kill landed inside a transaction"
    finish(start_archiver(settings, db_url))
    assert stored_events(engine) == total, f"seed {seed}"
    assert_all_there(engine, scene, want)


def test_three_archivers_at_once_store_each_event_once(
    published: tuple[Scenario, Histories], settings: Settings, db_url: str, engine: Engine
) -> None:
    scene, want = published
    procs = [start_archiver(settings, db_url) for _ in range(3)]
    stats = [finish(p) for p in procs]
    total = sum(len(evs) for evs in want.values())
    # Each event was read and written by exactly one of them (a batch written twice would
    # count twice here even where ON CONFLICT kept one row).
    assert sum(s["events"] for s in stats) == total, stats
    assert stored_events(engine) == total
    assert_all_there(engine, scene, want)
