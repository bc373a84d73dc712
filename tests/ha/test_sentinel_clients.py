"""Redis through Sentinel, part by part (issue 18): the settings, the clients every process
builds (events/clients.py), the publisher's own connection, WAIT with
CLOUDOPS_REDIS_MIN_REPLICAS, the relay's async clients and Celery's sentinel broker URL. The
whole failover, with workers, a relay and followers, is tests/faults/test_sentinel_failover.py.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from api.options import RelayOptions
from api.relay import RelayClients
from events.clients import BlockingSentinelConnectionPool, _master_options, redis_for
from events.errors import ConfigError, PublishTimeoutError
from events.keys import Keys
from events.lifecycle import Reporter
from events.models import ExecutionOptions, ExecutionOutputPayload, utc_now
from events.publisher import Publisher
from events.settings import Settings
from events.vocabulary import CommandType
from tests.sentinel import MASTER_NAME, SentinelSet
from worker.app import broker_url, celery_config

pytestmark = pytest.mark.sentinel


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    s = SentinelSet(tmp_path_factory.mktemp("sentinel")).start()
    yield s
    s.close()


@pytest.fixture
def ha_settings(sentinels: SentinelSet, key_prefix: str) -> Settings:
    return Settings(
        redis_sentinels=sentinels.addresses,
        redis_sentinel_master=MASTER_NAME,
        key_prefix=key_prefix,
        redis_min_replicas=1,
        # db 2 of whichever server is the master; the URL's host is not used.
        redis_url="redis://unused.invalid:1/2",
    )


# -- settings and options (no server) -------------------------------------------------------
def test_sentinel_settings_are_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("CLOUDOPS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CLOUDOPS_REDIS_SENTINELS", "10.0.0.1:26379, [::1]:26380")
    monkeypatch.setenv("CLOUDOPS_REDIS_SENTINEL_MASTER", "ops")
    monkeypatch.setenv("CLOUDOPS_REDIS_MIN_REPLICAS", "1")
    s = Settings.from_env()
    assert s.sentinel_addresses == [("10.0.0.1", 26379), ("::1", 26380)]
    assert not s.embedded and s.broker_on_sentinel and s.effective_broker_url is None
    monkeypatch.setenv("CLOUDOPS_REDIS_SENTINELS", "10.0.0.1")
    monkeypatch.setenv("CLOUDOPS_REDIS_MIN_REPLICAS", "-1")
    with pytest.raises(ConfigError) as info:
        Settings.from_env()
    message = str(info.value)
    assert "CLOUDOPS_REDIS_SENTINELS must be host:port" in message
    assert "CLOUDOPS_REDIS_MIN_REPLICAS" in message


def test_the_url_gives_the_master_its_database_credentials_and_tls() -> None:
    s = Settings(
        redis_sentinels=("s1:26379",),
        redis_url="rediss://ops:s3cret@ignored:6380/4?ssl_cert_reqs=none",
    )
    opts = _master_options(s)
    assert opts["db"] == 4 and opts["username"] == "ops" and opts["password"] == "s3cret"
    assert opts["ssl"] is True and opts["ssl_cert_reqs"] == "none"
    assert "host" not in opts and "port" not in opts


def test_celery_reaches_the_broker_through_the_sentinels_too() -> None:
    s = Settings(
        redis_sentinels=("10.0.0.1:26379", "10.0.0.2:26379"),
        redis_sentinel_master="ops",
        redis_sentinel_password="sentinel-pw",
        redis_url="redis://:pw@ignored:6379/3",
        key_prefix="team",
    )
    assert broker_url(s) == "sentinel://:pw@10.0.0.1:26379/3;sentinel://:pw@10.0.0.2:26379/3"
    conf = celery_config(s)
    assert conf["broker_transport"] == "worker.transport:SentinelTransport"
    options = conf["broker_transport_options"]
    assert options["master_name"] == "ops" and options["global_keyprefix"] == "team:celery:"
    assert options["sentinel_kwargs"]["password"] == "sentinel-pw"
    # A broker of its own (RabbitMQ) is used as it is, with the events still on Sentinel.
    amqp = s.with_(broker_url="amqp://guest:guest@mq:5672//")
    assert broker_url(amqp) == "amqp://guest:guest@mq:5672//"
    assert "broker_transport" not in celery_config(amqp)


# -- against real sentinels ---------------------------------------------------------------
def test_clients_and_the_publisher_reach_the_master_the_sentinels_name(
    sentinels: SentinelSet, ha_settings: Settings, rclient: redis.Redis
) -> None:
    keys = Keys(ha_settings.key_prefix)
    client = redis_for(ha_settings)
    publisher = Publisher(client, keys, ha_settings)
    try:
        rep = Reporter(publisher, "ex_sentinel", worker="t")
        rep.started("echo", CommandType.SCRIPT, ExecutionOptions())
        assert publisher.flush(10)
        master = sentinels.node_on(sentinels.master_port() or 0).client(db=2)
        replica = sentinels.replicas[0].client(db=2)
        # On the master's database 2, confirmed by the replica (WAIT) before flush returned;
        # and nowhere near the Redis on 6379 (redis-py's own connect would have gone there).
        assert master.xlen(keys.history("ex_sentinel")) == 1
        assert replica.xlen(keys.history("ex_sentinel")) == 1
        assert rclient.exists(keys.history("ex_sentinel")) == 0
        assert client.connection_pool.connection_kwargs["db"] == 2
    finally:
        publisher.close(timeout_s=2)
        client.close()


def test_min_replicas_holds_an_event_until_a_replica_has_it(
    sentinels: SentinelSet, ha_settings: Settings
) -> None:
    keys = Keys(ha_settings.key_prefix)
    client = redis_for(ha_settings)
    publisher = Publisher(client, keys, ha_settings)
    rep = Reporter(publisher, "ex_wait", worker="t")
    try:
        rep.started("echo", CommandType.SCRIPT, ExecutionOptions())
        assert publisher.flush(10)
        sentinels.partition()  # the replica gets nothing more
        try:
            with pytest.raises(PublishTimeoutError):
                publisher.publish(_output("ex_wait", "held\n"), wait=True, timeout_s=2.5)
            assert publisher.pending() == 1  # not confirmed: kept, to be sent again if need be
        finally:
            sentinels.heal()
        assert publisher.flush(20), "the event was not confirmed once the replica was back"
        replica = sentinels.replicas[0].client(db=2)
        entries: Any = replica.xrange(keys.history("ex_wait"))
        assert [e for e, _ in entries] == [b"1-0", b"2-0"]  # once: the WAIT was asked again
    finally:
        publisher.close(timeout_s=2)
        client.close()


def test_the_relays_async_clients_go_through_the_sentinels(ha_settings: Settings) -> None:
    async def run() -> None:
        clients = RelayClients.from_settings(ha_settings, RelayOptions(redis_max_connections=2))
        try:
            pool = clients.redis.connection_pool
            assert isinstance(pool, BlockingSentinelConnectionPool)
            # Past max_connections, requests wait for a free connection instead of failing.
            key = f"{ha_settings.key_prefix}:probe"
            await asyncio.gather(*(clients.redis.incr(key) for _ in range(20)))
            assert await clients.redis.get(key) == b"20"
            pubsub = clients.hub.pubsub()
            await pubsub.subscribe(f"{ha_settings.key_prefix}:chan")
            await clients.redis.publish(f"{ha_settings.key_prefix}:chan", "hi")
            msg = None
            while msg is None:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            assert msg["data"] == b"hi"
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        finally:
            await clients.redis.aclose()
            await clients.hub.aclose()

    asyncio.run(run())


def _output(execution_id: str, text: str) -> ExecutionOutputPayload:
    return ExecutionOutputPayload(
        execution_id=execution_id, output=text, stream="stdout", timestamp=utc_now()
    )
