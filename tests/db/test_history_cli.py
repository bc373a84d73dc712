"""The history through `cloudops` processes: embedded runs kept in the SQLite file (two runs,
then `ls` and `tail` in a third process), `cloudops db upgrade` and `cloudops db prune` (the
newest MIN_KEEP kept) on both dialects, and the relay's daily prune turn."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from cli.history import NO_DATABASE_WARNING
from events.db import migrate
from events.db.engine import make_engine
from events.db.service import take_prune_turn
from events.keys import Keys
from events.settings import Settings
from tests.db.pg import create_pg_database, drop_pg_database
from tests.db.seed import Row, insert_rows
from tests.db.test_retention import remaining
from tests.helpers import REPO, cloudops_argv, embedded_env, wait_until
from tests.relay.helpers import start_relay

pytestmark = pytest.mark.integration


def cloudops(*args: str, env: dict[str, str]) -> Any:
    return subprocess.run(
        cloudops_argv(*args), env=env, capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_two_embedded_runs_then_ls_and_tail(tmp_path: Path) -> None:
    env = {**embedded_env(), "XDG_DATA_HOME": str(tmp_path)}
    first = cloudops("run", "--", "echo first run", env=env)
    second = cloudops("run", "--", "echo second run >&2; exit 4", env=env)
    assert (first.returncode, second.returncode) == (0, 4)
    assert (tmp_path / "cloudops" / "history.db").is_file()
    listed = cloudops("ls", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["command"], r["status"]) for r in records] == [
        ("echo second run >&2; exit 4", "failed"),
        ("echo first run", "completed"),
    ]
    found = cloudops("ls", "--json", "--q", "FIRST", env=env).stdout.splitlines()
    assert [json.loads(line)["command"] for line in found] == ["echo first run"]
    tail = cloudops("tail", records[1]["executionId"], env=env)
    assert (tail.returncode, tail.stdout) == (0, "first run\n")
    tail = cloudops("tail", "--json", records[0]["executionId"], env=env)
    assert tail.returncode == 4
    assert [json.loads(line)["id"] for line in tail.stdout.splitlines()] == [1, 2, 3]


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_db_upgrade_then_prune_keeps_the_newest_min_keep(
    dialect: str, tmp_path: Path, pg_empty_url: str
) -> None:
    url = pg_empty_url if dialect == "postgresql" else f"sqlite:///{tmp_path}/h.db"
    env = {**embedded_env(), "CLOUDOPS_DATABASE_URL": url}
    up = cloudops("db", "upgrade", env=env)
    assert up.returncode == 0, up.stderr
    assert migrate.current_revision(url) == migrate.head_revision()
    engine = make_engine(url)
    try:
        old = datetime.now(UTC) - timedelta(days=40)
        rows = [Row(f"ex_{i:04d}", old + timedelta(minutes=i)) for i in range(30)]
        insert_rows(engine, rows)
        env.update(CLOUDOPS_RETENTION_DAYS="30", CLOUDOPS_RETENTION_MIN_KEEP="12")
        pruned = cloudops("db", "prune", env=env)
        assert pruned.returncode == 0, pruned.stderr
        assert "pruned 18 executions" in pruned.stderr
        assert remaining(engine) == [f"ex_{i:04d}" for i in range(29, 17, -1)]
    finally:
        engine.dispose()


def test_db_commands_with_a_bad_database_are_one_line() -> None:
    env = {
        **embedded_env(),
        "CLOUDOPS_DATABASE_URL": "postgresql://ops:hunter2@127.0.0.1:1/none",
    }
    for args in (["db", "upgrade"], ["db", "prune"]):
        done = cloudops(*args, env=env)
        assert done.returncode == 2
        assert len(done.stderr.splitlines()) == 1, done.stderr
        assert "unavailable" in done.stderr and "hunter2" not in done.stderr


def test_one_prune_turn_a_day_whatever_the_relays(redis_url: str, key_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = Keys(key_prefix)
    day = datetime(2026, 5, 1, 3, tzinfo=UTC)
    try:
        assert take_prune_turn(client, keys, day)
        assert not take_prune_turn(client, keys, day + timedelta(hours=20))
        assert take_prune_turn(client, keys, day + timedelta(days=1))
        assert 0 < int(client.ttl(keys.prune_turn("2026-05-01"))) <= 2 * 86400
    finally:
        client.close()


def test_a_relay_without_a_database_says_so_once(settings: Settings, tmp_path: Path) -> None:
    relay = start_relay(
        settings, tmp_path / "relay.log", tokens=("t",), env={"RELAY_TEST_DISPATCHER": "celery"}
    )
    try:
        with relay.client() as api:
            assert api.get("/api/executions").json() == []
        assert relay.logs().count(NO_DATABASE_WARNING) == 1, relay.logs()
    finally:
        relay.stop()


def test_the_relay_prunes_once_a_day(settings: Settings, tmp_path: Path) -> None:
    url = create_pg_database("prune")
    try:
        migrate.upgrade(url)
        engine = make_engine(url)
        old = datetime.now(UTC) - timedelta(days=40)
        insert_rows(engine, [Row(f"ex_{i:04d}", old + timedelta(minutes=i)) for i in range(30)])
        env = {
            "RELAY_TEST_DISPATCHER": "celery",
            "CLOUDOPS_DATABASE_URL": url,
            "CLOUDOPS_RETENTION_DAYS": "30",
            "CLOUDOPS_RETENTION_MIN_KEEP": "5",
        }
        relay = start_relay(settings, tmp_path / "relay.log", tokens=("t",), env=env)
        try:
            wait_until(lambda: len(remaining(engine)) == 5, 20.0, what="the relay's prune")
            assert remaining(engine) == [f"ex_{i:04d}" for i in range(29, 24, -1)]
            # Today's turn is taken: another relay of the fleet would not prune again.
            client = redis.Redis.from_url(settings.redis_url or "")
            today = datetime.now(UTC).strftime("%Y-%m-%d")
            assert client.exists(Keys(settings.key_prefix).prune_turn(today))
            client.close()
        finally:
            relay.stop()
            engine.dispose()
    finally:
        drop_pg_database(url)
