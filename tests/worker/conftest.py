"""Fixtures for worker integration tests: a dispatcher on the test's prefix, event reading."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from events.settings import Settings
from events.subscriber import Follower
from events.wire import RawEvent
from tests.conftest import REDIS_URL
from tests.helpers import CeleryDispatcher

__all__ = ["CeleryDispatcher", "Collect"]


@pytest.fixture
def settings(key_prefix: str, broker_url: str | None) -> Settings:
    # Shorter grace and lease than production so that kill and loss tests end quickly; the
    # start_worker fixture passes these to the worker processes. `broker_url`: RabbitMQ for the
    # tests marked `brokers` (tests/conftest.py), else the Redis broker.
    return Settings(
        redis_url=REDIS_URL,
        key_prefix=key_prefix,
        broker_url=broker_url,
        kill_grace_s=2.0,
        lease_ttl_s=4,
    )


@pytest.fixture
def dispatcher(settings: Settings) -> Iterator[CeleryDispatcher]:
    d = CeleryDispatcher(settings)
    yield d
    d.rt.publisher.close(timeout_s=5)
    d.rt.redis.close()


Collect = Callable[..., list[RawEvent]]


@pytest.fixture
def collect(dispatcher: CeleryDispatcher) -> Collect:
    """All events of an execution until execution_complete (fails after timeout_s)."""

    def run(execution_id: str, timeout_s: float = 60.0, after: int = 0) -> list[RawEvent]:
        rt = dispatcher.rt
        follower = Follower(rt.redis, rt.keys, execution_id, after, idle_timeout_s=timeout_s)
        events = list(follower)
        assert events and events[-1].event == "execution_complete", (
            f"no execution_complete for {execution_id} within {timeout_s} s: "
            f"{[e.event for e in events][-5:]}"
        )
        return events

    return run
