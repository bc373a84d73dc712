"""Shared fixtures. Each test gets its own key prefix on the shared Redis, removed afterwards
(and its workers' records of running commands in the host's state dir, worker/leftovers.py)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

import pytest
import redis

from events.keys import Keys
from events.settings import Settings

REDIS_URL = os.environ.get("CLOUDOPS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session", autouse=True)
def _private_data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """XDG_DATA_HOME in a temporary directory for every test and the processes they start, so
    that embedded mode's history database (and anything else kept there) never lands in the
    real home."""
    old = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    yield
    if old is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = old


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
    # Records of executions the test lost on purpose; no worker of its will start again.
    shutil.rmtree(os.path.join(Settings().state_dir, prefix), ignore_errors=True)
    client = redis.Redis.from_url(REDIS_URL)
    _delete_prefix(client, prefix)
    client.close()


@pytest.fixture
def settings(key_prefix: str, broker_url: str | None) -> Settings:
    return Settings(redis_url=REDIS_URL, key_prefix=key_prefix, broker_url=broker_url)


# -- brokers: Redis, and RabbitMQ for the tests marked `brokers` ------------------------------

BROKERS = ("redis", "rabbitmq")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked `brokers` runs once with each broker (Redis, RabbitMQ); every other test
    with the Redis broker only."""
    if metafunc.definition.get_closest_marker("brokers") and "broker" in metafunc.fixturenames:
        metafunc.parametrize("broker", BROKERS, indirect=True)


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "redis"))


@pytest.fixture
def broker_url(broker: str, request: pytest.FixtureRequest) -> str | None:
    """CLOUDOPS_BROKER_URL of the test: None (the events' Redis) or the module's vhost."""
    if broker == "rabbitmq":
        return str(request.getfixturevalue("rabbitmq_url"))
    return None


@pytest.fixture(scope="module")
def rabbitmq_url() -> Iterator[str]:
    """A RabbitMQ virtual host of this test module's own on the machine's RabbitMQ (made and
    deleted with rabbitmqctl): its amqp:// URL."""
    from tests.rabbitmq import private_vhost

    with private_vhost() as url:
        yield url


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

from tests.helpers import ManagedProcess, cloudops_argv, start_process, worker_env  # noqa: E402

__all__ = ["worker_env"]


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
        labels: tuple[str, ...] = (),
    ) -> ManagedProcess:
        name = hostname or f"w{len(started) + 1}@test"
        args = ["worker", "--concurrency", str(concurrency), "--hostname", name]
        if queues:
            args += ["--queues", queues]
        for label in labels:
            args += ["--label", label]
        log_path = tmp_path / f"worker-{name.replace('@', '_')}-{len(started)}.log"
        proc = start_process(cloudops_argv(*args), worker_env(settings, env), log_path, name)
        started.append(proc)
        if wait_ready:
            proc.wait_for_log(" ready.", timeout_s=60)
        return proc

    yield start
    for proc in started:
        proc.stop(timeout_s=10)
