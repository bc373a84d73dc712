"""Fixtures of the high-availability tests: a relay exactly as `cloudops relay` runs it (the
Celery dispatcher, its reaper, its health checks) on each module's `settings`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from events.settings import Settings
from tests.relay.helpers import RelayProcess, start_relay

TOKEN = "ha-t0ken"


@pytest.fixture
def relay(settings: Settings, tmp_path: Path) -> Iterator[RelayProcess]:
    r = start_relay(
        settings, tmp_path / "relay.log", tokens=(TOKEN,), env={"RELAY_TEST_DISPATCHER": "celery"}
    )
    yield r
    r.stop()
