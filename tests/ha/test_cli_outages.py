"""The CLI in fleet mode with its Redis or its broker down (issue 18): one line on stderr
naming what is down and exit 1 (not bad input, which is 2), never a traceback, and within the
10 s a relay would take."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.conftest import REDIS_URL
from tests.helpers import REPO, cloudops_argv, free_port, venv_path_env

pytestmark = pytest.mark.integration


def cloudops(*args: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    base = {
        k: v for k, v in venv_path_env(dict(os.environ)).items() if not k.startswith("CLOUDOPS_")
    }
    t0 = time.monotonic()
    done = subprocess.run(
        cloudops_argv(*args),
        env=base | env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )
    return done, time.monotonic() - t0


def test_redis_down_is_one_line_naming_it(key_prefix: str) -> None:
    env = {"CLOUDOPS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    for args in (("tail", "ex_nothing"), ("ls",), ("run", "--", "echo", "hi")):
        done, took_s = cloudops(*args, env=env | {"CLOUDOPS_KEY_PREFIX": key_prefix})
        lines = done.stderr.splitlines()
        assert done.returncode == 1, (args, done.stderr)
        assert len(lines) == 1 and "the event store (Redis) is unavailable" in lines[0], lines
        assert took_s < 10, (args, took_s)


@pytest.mark.brokers
def test_broker_down_is_one_line_naming_it(key_prefix: str, broker: str) -> None:
    scheme = "amqp://guest:guest@" if broker == "rabbitmq" else "redis://"
    env = {
        "CLOUDOPS_REDIS_URL": REDIS_URL,
        "CLOUDOPS_BROKER_URL": f"{scheme}127.0.0.1:{free_port()}/0",
        "CLOUDOPS_KEY_PREFIX": key_prefix,
    }
    done, took_s = cloudops("run", "--", "echo", "hi", env=env)
    name = "RabbitMQ" if broker == "rabbitmq" else "Redis"
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"cloudops: error: the broker ({name}) is unavailable: "), lines
    assert took_s < 10
