"""`cloudops scheduler`: a Celery beat (worker/beat.py) wired to this fleet's schedules, its
Redis and the start path of a run by name. Run two or more: one ticks, the others stand by."""

from __future__ import annotations

import logging
import os
import socket
import sys
from datetime import datetime

from api.dispatch import start_saved
from cli.wiring import fleet
from events.db.errors import NoDatabaseError
from events.db.schedules import Schedule
from events.requests import ScheduledTick
from events.schedules import TickClaim, iso
from events.settings import Settings
from worker.app import client_app
from worker.beat import BeatHooks, run_beat

log = logging.getLogger(__name__)


def run_scheduler(settings: Settings, max_interval_s: float = 1.0) -> None:
    """Until SIGTERM/SIGINT (worker.beat.StopGate). NoDatabaseError without
    CLOUDOPS_DATABASE_URL."""
    parts = fleet(settings)
    schedules, playbooks = parts.schedules, parts.playbooks
    if schedules is None or playbooks is None:
        raise NoDatabaseError()
    rt = parts.runtime

    def fire(row: Schedule, tick: datetime) -> None:
        spec = row.spec
        execution_id = start_saved(
            parts.dispatcher,
            playbooks,
            spec.playbook_name,
            spec.params,
            schedule=ScheduledTick(row.id, iso(tick)),
        )
        log.info("scheduler: %s tick %s started %s", row.id, iso(tick), execution_id)

    hooks = BeatHooks(
        schedules.all,
        TickClaim(rt.redis, rt.keys),
        fire,
        f"{socket.gethostname()}:{os.getpid()}",
    )
    app = client_app(settings)
    assert settings.redis_url is not None
    app.conf.update(
        redbeat_redis_url=settings.redis_url,
        redbeat_key_prefix=rt.keys.beat_prefix(),
        redbeat_redis_options={},  # not the broker's transport options (redbeat 2.5 drops it)
    )
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s")
    run_beat(app, hooks, max_interval_s)
