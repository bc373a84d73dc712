"""Shared fixtures. Each test gets its own key prefix on the shared Redis, removed afterwards."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from events.keys import Keys
from events.settings import Settings

REDIS_URL = os.environ.get("CLOUDOPS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _delete_prefix(client: redis.Redis, prefix: str) -> None:
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        client.delete(key)


@pytest.fixture
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture
def key_prefix() -> Iterator[str]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    _delete_prefix(client, prefix)
    client.close()


@pytest.fixture
def settings(key_prefix: str) -> Settings:
    return Settings(redis_url=REDIS_URL, key_prefix=key_prefix)


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return Keys(settings.key_prefix)


@pytest.fixture
def rclient() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()
