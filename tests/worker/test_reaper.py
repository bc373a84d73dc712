"""The reaper against a real Redis that hangs: an outage is no proof that a host died."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from events.settings import Settings
from events.vocabulary import Status
from tests.helpers import CeleryDispatcher, PrivateRedis, wait_until
from worker.reaper import start_reaper

pytestmark = pytest.mark.integration

LEASE_TTL_S = 2


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    s = PrivateRedis(tmp_path, persistent=False)
    s.start()
    yield s
    if s.paused:
        s.resume()
    s.kill()


@pytest.fixture
def dispatcher(server: PrivateRedis) -> Iterator[CeleryDispatcher]:
    settings = Settings(redis_url=server.url, key_prefix="reaper-test", lease_ttl_s=LEASE_TTL_S)
    d = CeleryDispatcher(settings)
    yield d
    d.rt.publisher.close(timeout_s=5)
    d.rt.redis.close()


class Host:
    """A live host's watchdog: renews the run's lease each 0.2 s while `renewing` is set."""

    def __init__(self, dispatcher: CeleryDispatcher, execution_id: str) -> None:
        self.renewing = threading.Event()
        self.renewing.set()
        self._stop = threading.Event()

        def loop() -> None:
            while not self._stop.wait(0.2):
                if self.renewing.is_set():
                    with contextlib.suppress(Exception):  # Redis hung: the next beat retries
                        dispatcher.rt.records.renew_lease(execution_id, "live@test")

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)


def status(dispatcher: CeleryDispatcher, execution_id: str) -> str:
    return dispatcher.rt.records.raw(execution_id).get("status", "")


def test_a_hang_longer_than_a_lease_does_not_make_a_live_run_lost(
    server: PrivateRedis, dispatcher: CeleryDispatcher
) -> None:
    queue = f"nobody-{uuid.uuid4().hex[:8]}"
    ex = dispatcher.submit_playbook(
        {"name": "reaped?", "steps": [{"id": "one", "command": "true", "queue": queue}]}
    )
    records = dispatcher.rt.records
    assert records.claim(ex, "live@test", f"{ex}.s1", step=0) == "ok"
    host = Host(dispatcher, ex)
    stop = start_reaper(dispatcher.rt, dispatcher.tasks, None)
    try:
        # The reaper has run long enough to trust leases; the run is left alone.
        hang_at = time.monotonic() + 2 * LEASE_TTL_S
        wait_until(lambda: time.monotonic() > hang_at, 10, what="the reaper to trust leases")
        assert status(dispatcher, ex) == Status.RUNNING
        # Redis hangs for two leases (more than a reaper's interval, so a scan is caught in
        # it), shorter than the clients' socket timeout (nothing fails, it only stalls). When
        # it answers again the lease has lapsed; the host's watchdog needs a moment to renew.
        host.renewing.clear()
        server.pause()
        time.sleep(2 * LEASE_TTL_S)  # the fault's duration
        server.resume()
        renew_at = time.monotonic() + LEASE_TTL_S / 2
        wait_until(lambda: time.monotonic() > renew_at, 10, what="the slow watchdog")
        host.renewing.set()
        settled = time.monotonic() + 2 * LEASE_TTL_S
        while time.monotonic() < settled:
            assert status(dispatcher, ex) == Status.RUNNING, "a live run was declared lost"
            time.sleep(0.05)
        # The host really dies: its run is lost once the lease lapses with Redis answering.
        host.close()
        wait_until(lambda: status(dispatcher, ex) == Status.FAILED, 5 * LEASE_TTL_S)
    finally:
        stop.set()
        host.close()
