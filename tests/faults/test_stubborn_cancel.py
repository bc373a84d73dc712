"""A command that ignores SIGTERM, cancelled: the kill grace runs out, SIGKILL ends it.

The fault is the command's: it shrugs off the polite signal, so its cancel takes the whole
kill grace, here longer than the execution's lease. The run is alive all along and must end
`cancelled`, not be declared lost by another worker's reaper meanwhile.
"""

from __future__ import annotations

import pytest

from tests.faults.conftest import MakeFleet
from tests.faults.invariants import LEDGER
from tests.helpers import PrivateRedis

pytestmark = [pytest.mark.fault, pytest.mark.integration]


def test_cancel_outlasting_the_lease_still_ends_cancelled(
    private_redis: PrivateRedis, make_fleet: MakeFleet
) -> None:
    # Production keeps the grace (5 s) under the lease (8 s); a slow publish under load eats
    # the difference. Here the grace alone outlasts the lease.
    fleet = make_fleet(private_redis.url, kill_grace_s=4.0, lease_ttl_s=2)
    for n in range(2):
        fleet.start_worker(f"w{n}@faults", concurrency=2)
    runs = [fleet.chatty(seconds=30, interval_ms=10, ignore_term=True) for _ in range(4)]
    for t in runs:
        fleet.follow(t.execution_id)
    fleet.wait_streaming(runs, min_events=10, timeout_s=30)
    for t in runs:
        fleet.dispatcher.cancel(t.execution_id)
        t.expect = frozenset({"cancelled"})
    LEDGER.inject("commands ignoring SIGTERM, cancelled", len(runs))
    fleet.check(timeout_s=30)
