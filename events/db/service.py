"""History beside a relay: the archiver's loop and the daily prune, as one start/stop service.

The relay's composition root (cli/) starts it beside the relay (api.dispatch.Service). The
archiver runs in a thread of its own (`Archiver.run_forever`: a failing pass is retried, never
fatal); the prune runs once a day per fleet: every hour each relay asks for the day's turn key
(`SET NX`, events.keys.Keys.prune_turn) and the one that gets it prunes (retention.prune also
holds a database lock, so even two turns would not prune twice at once).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from datetime import UTC, datetime

import redis
from sqlalchemy import Engine

from events.db.archive import Archiver
from events.db.retention import prune
from events.keys import Keys

log = logging.getLogger(__name__)

PRUNE_CHECK_INTERVAL_S = 3600.0
_TURN_TTL_S = 2 * 86400


def take_prune_turn(client: redis.Redis, keys: Keys, now: datetime | None = None) -> bool:
    """True for the first caller of the day (UTC) in this fleet, False for every other."""
    day = (now or datetime.now(UTC)).strftime("%Y-%m-%d")
    return bool(client.set(keys.prune_turn(day), "1", nx=True, ex=_TURN_TTL_S))


class HistoryService:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        engine: Engine,
        *,
        retention_days: int,
        retention_min_keep: int,
        archive_interval_s: float = 1.0,
    ) -> None:
        self.archiver = Archiver(client, keys, engine)
        self._client = client
        self._keys = keys
        self._engine = engine
        self._retention = (retention_days, retention_min_keep)
        self._interval_s = archive_interval_s
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._stop.clear()
        for name, target in (("archive", self._archive), ("prune", self._prune)):
            t = threading.Thread(target=target, name=f"cloudops-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        self._threads.clear()

    def _archive(self) -> None:
        self.archiver.run_forever(self._stop, self._interval_s)

    def _prune_now(self) -> None:
        try:
            n = prune(self._engine, *self._retention)
            log.info("daily prune: %d executions deleted", n)
        except Exception:
            # The database down: give the day's turn back, so that the next try (this relay's
            # or another's, within the hour) prunes.
            log.exception("daily prune failed")
            day = datetime.now(UTC).strftime("%Y-%m-%d")
            with contextlib.suppress(redis.RedisError):
                self._client.delete(self._keys.prune_turn(day))

    def _prune(self) -> None:
        while not self._stop.is_set():
            try:
                if take_prune_turn(self._client, self._keys):
                    self._prune_now()
            except Exception:
                # Redis down: the next hour asks again.
                log.exception("daily prune: could not take the turn")
            self._stop.wait(PRUNE_CHECK_INTERVAL_S)
