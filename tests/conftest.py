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


# -- workers -------------------------------------------------------------------------------

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

from tests.helpers import ManagedProcess, cloudops_argv, start_process, venv_path_env  # noqa: E402


def worker_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = venv_path_env(dict(os.environ))
    env.update(
        {
            "CLOUDOPS_REDIS_URL": settings.redis_url or REDIS_URL,
            "CLOUDOPS_KEY_PREFIX": settings.key_prefix,
            "CLOUDOPS_KILL_GRACE_S": str(settings.kill_grace_s),
            "CLOUDOPS_LEASE_TTL_S": str(settings.lease_ttl_s),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


StartWorker = Callable[..., ManagedProcess]


@pytest.fixture
def start_worker(settings: Settings, tmp_path: Path) -> Iterator[StartWorker]:
    """Start real `cloudops worker` processes on this test's key prefix; all stopped after."""
    started: list[ManagedProcess] = []

    def start(
        *,
        hostname: str | None = None,
        queues: str | None = None,
        concurrency: int = 2,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
    ) -> ManagedProcess:
        name = hostname or f"w{len(started) + 1}@test"
        args = ["worker", "--concurrency", str(concurrency), "--hostname", name]
        if queues:
            args += ["--queues", queues]
        log_path = tmp_path / f"worker-{name.replace('@', '_')}-{len(started)}.log"
        proc = start_process(cloudops_argv(*args), worker_env(settings, env), log_path, name)
        started.append(proc)
        if wait_ready:
            proc.wait_for_log(" ready.", timeout_s=60)
        return proc

    yield start
    for proc in started:
        proc.stop(timeout_s=10)
