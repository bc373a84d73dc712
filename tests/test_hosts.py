"""The host registry module (events/hosts.py) and a worker's presence (worker/presence.py), on
fakeredis: what is written, how readers list it, when a host is offline and when it goes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
import redis

from events.errors import InvalidRequestError
from events.hosts import KEEP_S, HostEntry, HostRegistry, entry_for, package_version, parse_labels
from events.keys import Keys
from worker.presence import Presence

KEYS = Keys("unit")
T0 = datetime(2026, 12, 2, 5, 0, tzinfo=UTC)


def entry(hostname: str, at: datetime = T0, **kw: object) -> HostEntry:
    fields: dict[str, object] = {"queues": ("web",), "labels": {"region": "eu"}}
    fields |= {"concurrency": 4, "running": 1, "version": "1.2.3", **kw}
    return HostEntry.model_validate({"hostname": hostname, "last_seen": at, **fields})


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


def test_listed_sorted_by_hostname_with_every_field(client: fakeredis.FakeRedis) -> None:
    reg = HostRegistry(KEYS)
    reg.write(client, entry("web2@eu"))
    reg.write(client, entry("web1@eu", running=0, labels={}))
    hosts = reg.read(client, T0 + timedelta(seconds=1))
    assert [h["hostname"] for h in hosts] == ["web1@eu", "web2@eu"]
    assert hosts[1] == {
        "hostname": "web2@eu",
        "queues": ["web"],
        "labels": {"region": "eu"},
        "online": True,
        "lastSeen": "2026-12-02T05:00:00.000Z",
        "running": 1,
        "concurrency": 4,
        "version": "1.2.3",
    }
    assert hosts[0]["labels"] == {} and hosts[0]["running"] == 0


def test_offline_after_10_s_and_gone_after_a_day(client: fakeredis.FakeRedis) -> None:
    reg = HostRegistry(KEYS)
    reg.write(client, entry("a@x"))
    assert reg.read(client, T0 + timedelta(seconds=9.9))[0]["online"] is True
    assert reg.read(client, T0 + timedelta(seconds=10))[0]["online"] is False
    assert reg.read(client, T0 + timedelta(seconds=KEEP_S - 1))[0]["online"] is False
    assert reg.read(client, T0 + timedelta(seconds=KEEP_S + 1)) == []
    # The entry's key expires a day after its write, with the set.
    assert 0 < client.ttl(KEYS.host("a@x")) <= KEEP_S
    assert 0 < client.ttl(KEYS.hosts()) <= KEEP_S


def test_a_write_drops_hosts_not_seen_for_a_day(client: fakeredis.FakeRedis) -> None:
    reg = HostRegistry(KEYS)
    reg.write(client, entry("old@x"))
    reg.write(client, entry("new@x", at=T0 + timedelta(seconds=KEEP_S + 5)))
    assert client.zrange(KEYS.hosts(), 0, -1) == [b"new@x"]


def test_a_clean_stop_is_offline_at_once(client: fakeredis.FakeRedis) -> None:
    reg = HostRegistry(KEYS)
    reg.write(client, entry("a@x", stopped=True))
    assert reg.read(client, T0)[0]["online"] is False


def test_unreadable_and_expired_entries_are_left_out(client: fakeredis.FakeRedis) -> None:
    reg = HostRegistry(KEYS)
    reg.write(client, entry("good@x"))
    reg.write(client, entry("bad@x"))
    reg.write(client, entry("gone@x"))
    client.set(KEYS.host("bad@x"), b"{not json")
    client.delete(KEYS.host("gone@x"))
    assert [h["hostname"] for h in reg.read(client, T0)] == ["good@x"]


def test_async_read_is_the_same_list() -> None:
    server = fakeredis.FakeServer()
    reg = HostRegistry(KEYS)
    reg.write(fakeredis.FakeRedis(server=server), entry("a@x"))

    async def read() -> object:
        aclient = fakeredis.FakeAsyncRedis(server=server)
        try:
            return await reg.aread(aclient, T0)
        finally:
            await aclient.aclose()

    assert asyncio.run(read()) == reg.read(fakeredis.FakeRedis(server=server), T0)


def test_entry_for_is_now_with_this_version() -> None:
    e = entry_for("a@x", queues=["q"], labels={}, concurrency=2, running=0)
    assert e.version == package_version() != ""
    assert (datetime.now(UTC) - e.last_seen).total_seconds() < 5


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], {}),
        (["region=eu", "tier=web"], {"region": "eu", "tier": "web"}),
        (["example.com/role=db", "empty="], {"example.com/role": "db", "empty": ""}),
        (["k=a=b", "k=a=b"], {"k": "a=b"}),
    ],
)
def test_labels(args: list[str], expected: dict[str, str]) -> None:
    assert parse_labels(args) == expected


@pytest.mark.parametrize(
    ("arg", "says"),
    [
        ("region", "expected KEY=VALUE"),
        ("=eu", "not a valid label key"),
        ("-x=eu", "not a valid label key"),
        ("re gion=eu", "not a valid label key"),
        ("region=e u", "no white space"),
        ("k" * 64 + "=v", "not a valid label key"),
    ],
)
def test_bad_labels_name_the_problem(arg: str, says: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        parse_labels([arg])
    assert err.value.field == "label" and says in err.value.message


def test_a_label_given_twice_with_two_values_is_refused() -> None:
    with pytest.raises(InvalidRequestError, match="region given twice"):
        parse_labels(["region=eu", "region=us"])


def _presence(client: redis.Redis, running: list[int]) -> Presence:
    return Presence(
        client,
        KEYS,
        "p@x",
        queues=["a", "b"],
        labels={"k": "v"},
        concurrency=3,
        running=lambda: running[0],
        interval_s=0.05,
    )


def test_presence_registers_refreshes_and_marks_offline(client: fakeredis.FakeRedis) -> None:
    from tests.helpers import wait_until

    reg = HostRegistry(KEYS)
    running = [0]
    p = _presence(client, running)
    p.start()
    try:
        (host,) = reg.read(client)  # registered before start() returned
        assert host["online"] and host["queues"] == ["a", "b"] and host["concurrency"] == 3
        running[0] = 2
        wait_until(lambda: reg.read(client)[0]["running"] == 2, 5, what="a refresh")
        p.stopping()
        assert reg.read(client)[0]["online"] is False
        running[0] = 1
        wait_until(lambda: reg.read(client)[0]["running"] == 1, 5, what="beats while draining")
    finally:
        p.stop()
    (host,) = reg.read(client)
    assert host["online"] is False and host["running"] == 1


def test_presence_survives_redis_errors(client: fakeredis.FakeRedis) -> None:
    class Down(fakeredis.FakeRedis):
        def pipeline(self, *a: object, **kw: object) -> Any:
            raise redis.ConnectionError("down")

    assert _presence(Down(), [0]).beat() is False
    assert _presence(client, [0]).beat() is True
