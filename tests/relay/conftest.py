"""Fixtures of the relay tests: a real uvicorn relay per test, on the test's key prefix."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from events.settings import Settings
from tests.relay.helpers import RelayProcess, start_relay

StartRelay = Callable[..., RelayProcess]


@pytest.fixture
def token() -> str:
    return "tok-" + secrets.token_hex(16)


@pytest.fixture
def start(settings: Settings, tmp_path: Path, token: str) -> Iterator[StartRelay]:
    """Start relays (stopped at the end): start(tokens=..., env=...)."""
    started: list[RelayProcess] = []

    def _start(**kwargs: object) -> RelayProcess:
        kwargs.setdefault("tokens", (token,))
        n = len(started)
        relay = start_relay(settings, tmp_path / f"relay{n}.log", **kwargs)  # type: ignore[arg-type]
        started.append(relay)
        return relay

    yield _start
    for relay in started:
        relay.stop()


@pytest.fixture
def relay(start: StartRelay) -> RelayProcess:
    return start(env={"CLOUDOPS_SSE_PING_INTERVAL_S": "0.5"})


@pytest.fixture
def api(relay: RelayProcess) -> Iterator[httpx.Client]:
    with relay.client() as client:
        yield client
