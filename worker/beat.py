"""The scheduler (`cloudops scheduler`): Celery beat with celery-redbeat, on our schedules.

celery-redbeat is the field's standard shared store for beat: its entries live in Redis and a
Redis lock lets one beat of many tick at a time (the others wait on the lock and take over
within `lock_timeout` of the active one's death; a clean stop releases it at once). On it:

- The definitions' truth is the history database (events.db.schedules): each tick the active
  beat syncs its redbeat entries (`<prefix>:beat:*`) from the rows, at most every `SYNC_S`.
- When a tick is due is decided by events.schedules.Cadence, never by beat's "last run + run
  every": beat (and redbeat, `due_at`) would run an entry overdue since before a restart once at
  start-up; a tick more than its grace late is skipped instead (not replayed), and the entry's
  `last_run_at` (redbeat's meta) set to it.
- Exactly one run per tick even if two beats tick at once (a lock that expired under a stalled
  holder: redbeat then raises in the stalled one's next extend, after it may have ticked):
  the tick is claimed first (events.schedules.TickClaim, SET NX), and only the claimer starts it.
- The run is started by the injected `fire` (cli/: the same start path as a run by name from
  the relay), in this process: no task hop, so `max_concurrent` and every check of a run by
  name apply as they do to an API start.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

from celery import Celery
from celery.beat import Service
from celery.schedules import schedule as every
from redbeat import RedBeatScheduler, RedBeatSchedulerEntry

from events.db.schedules import Schedule
from events.errors import CloudOpsError
from events.schedules import TickClaim

log = logging.getLogger(__name__)

SYNC_S = 1.0
# The lock is held for this many beat intervals: a dead beat's standby takes over after it.
LOCK_INTERVALS = 5
TASK = "cloudops.schedule"  # named in the entries for operators; beat sends no task


class StopGate:
    """SIGTERM/SIGINT stop the beat (SystemExit: its loop ends and releases the lock), but
    never inside a run's start: between its record and its task a stop would leave the run
    queued for good. Then the stop waits for the start to end."""

    def __init__(self) -> None:
        self.starting = False
        self.stop_asked = False

    def ask(self, _sig: int = 0, _frame: FrameType | None = None) -> None:
        if self.starting:
            self.stop_asked = True
            return
        raise SystemExit(0)

    @contextmanager
    def start(self) -> Iterator[None]:
        self.starting = True
        try:
            yield
        finally:
            self.starting = False
        if self.stop_asked:
            raise SystemExit(0)


@dataclass(frozen=True)
class BeatHooks:
    """What the scheduler needs from the composition root."""

    schedules: Callable[[], list[Schedule]]  # every schedule (the database)
    claims: TickClaim
    fire: Callable[[Schedule, datetime], None]  # start the run of a tick
    name: str  # this scheduler, in its claims
    gate: StopGate = field(default_factory=StopGate)


class CloudopsBeat(RedBeatScheduler):  # type: ignore[misc]
    hooks: BeatHooks

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._rows: dict[str, Schedule] = {}
        self._synced_at = 0.0
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        self._sync(force=True)

    def _sync(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._synced_at < SYNC_S:
            return
        try:
            rows = {s.id: s for s in self.hooks.schedules() if s.spec.enabled}
        except Exception as e:  # the database is down: keep ticking on what was read last
            log.warning("scheduler: cannot read the schedules: %s", e)
            return
        self._synced_at = time.monotonic()
        for sid in self._rows.keys() - rows.keys():
            RedBeatSchedulerEntry(sid, app=self.app).delete()
        for sid, row in rows.items():
            if self._rows.get(sid) != row:
                self._entry(row).save()
        self._rows = rows

    def _entry(self, row: Schedule) -> RedBeatSchedulerEntry:
        period = timedelta(seconds=row.spec.interval_s or 60)
        return RedBeatSchedulerEntry(
            row.id,
            TASK,
            every(period),
            kwargs={"scheduleId": row.id},
            app=self.app,
            last_run_at=row.anchor,  # kept only for a new entry (redbeat's meta: HSETNX)
        )

    @property
    def schedule(self) -> dict[str, Any]:
        """The synced entries with their meta (the last tick started) from Redis."""
        out: dict[str, Any] = {}
        for sid in self._rows:
            try:
                out[sid] = RedBeatSchedulerEntry.from_key(self._entry_key(sid), app=self.app)
            except KeyError:
                continue  # deleted under us: the next sync writes it again or drops it
        return out

    def _entry_key(self, sid: str) -> str:
        return str(RedBeatSchedulerEntry.generate_key(self.app, sid))

    def _fire(self, row: Schedule, tick: datetime) -> None:
        """Start the tick's run; a run that cannot start (its playbook deleted, its params no
        longer valid, the broker down) is logged and that tick is lost: at most once."""
        try:
            with self.hooks.gate.start():
                self.hooks.fire(row, tick)
        except CloudOpsError as e:
            log.warning("scheduler: %s could not start its run of %s: %s", row.id, tick, e)
        except Exception:
            log.exception("scheduler: %s could not start its run of %s", row.id, tick)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        self._sync()
        return float(super().tick(*args, **kwargs))

    def maybe_due(self, entry: RedBeatSchedulerEntry, **_: Any) -> float:
        row = self._rows.get(entry.name)
        if row is None:
            return float(self.max_interval)
        now = datetime.now(UTC)
        cadence = row.cadence
        tick = cadence.due(now)
        last = entry.last_run_at
        if tick is not None and (last is None or last < tick):
            if self.hooks.claims.claim(row.id, tick, self.hooks.name):
                self._fire(row, tick)
            entry.reschedule(tick)
        return max((cadence.next(now) - datetime.now(UTC)).total_seconds(), 0.01)


def run_beat(app: Celery, hooks: BeatHooks, max_interval_s: float = 1.0) -> None:
    """Run a beat until SIGTERM/SIGINT (StopGate: the lock released, no start cut short)."""
    signal.signal(signal.SIGTERM, hooks.gate.ask)
    signal.signal(signal.SIGINT, hooks.gate.ask)
    scheduler = type("Beat", (CloudopsBeat,), {"hooks": hooks})
    app.conf.redbeat_lock_timeout = max(int(max_interval_s * LOCK_INTERVALS), 2)
    Service(app, max_interval=max_interval_s, scheduler_cls=scheduler).start()
