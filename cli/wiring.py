"""Put the parts together: a fleet's or embedded mode's runtime and dispatcher, the relay's
services, the worker's start-up. Nothing else in the code base does this.

Embedded mode is the fleet's code on an in-process Redis (fakeredis' FakeServer, shared by the
sync clients of the worker side and the async ones of the relay) with a task queue that runs
the task bodies in threads: the same publisher, records, readers, slots and relay.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import fakeredis
from sqlalchemy import Engine

from api.relay import RelayClients
from cli import webhooks
from cli.history import history_engine
from events.db.audit import AuditLog
from events.db.playbooks import PlaybookStore
from events.db.query import History
from events.db.schedules import ScheduleStore
from events.db.tokens import TokenStore
from events.settings import Settings
from worker.app import client_app
from worker.dispatcher import Dispatcher
from worker.embedded import ThreadQueue
from worker.presence import Presence
from worker.reaper import start_reaper
from worker.runtime import Runtime
from worker.taskqueue import CeleryQueue, TaskQueue

log = logging.getLogger(__name__)


@dataclass
class Local:
    """What a process that submits and follows executions itself holds."""

    runtime: Runtime
    dispatcher: Dispatcher
    server: fakeredis.FakeServer | None = None  # embedded mode's in-process Redis
    # The history database (cli.history): CLOUDOPS_DATABASE_URL's, embedded mode's SQLite file.
    engine: Engine | None = None
    # Embedded mode's one in-process worker in the host registry (not started: the relay runs
    # it as a service, `cloudops workers` writes it once).
    presence: Presence | None = None

    @property
    def history(self) -> History | None:
        return None if self.engine is None else History(self.engine)

    @property
    def playbooks(self) -> PlaybookStore | None:
        """Saved playbooks, in the history database, checked by this dispatcher's loader."""
        if self.engine is None:
            return None
        return PlaybookStore(self.engine, self.dispatcher.check_playbook)

    @property
    def schedules(self) -> ScheduleStore | None:
        """Schedules, in the history database, of its saved playbooks."""
        playbooks = self.playbooks
        if self.engine is None or playbooks is None:
            return None
        return ScheduleStore(self.engine, playbooks, self.dispatcher.check_run)

    @property
    def tokens(self) -> TokenStore | None:
        """Named API tokens (CONTRACT §9), in the history database."""
        return None if self.engine is None else TokenStore(self.engine)

    @property
    def audit(self) -> AuditLog | None:
        """The audit log (CONTRACT §9), in the history database."""
        return None if self.engine is None else AuditLog(self.engine)

    @property
    def embedded(self) -> bool:
        return self.server is not None

    def relay_clients(self) -> RelayClients | None:
        """The relay's async clients on embedded mode's Redis (None on a fleet: the relay
        connects to the settings' Redis itself)."""
        if self.server is None:
            return None
        return RelayClients(
            fakeredis.FakeAsyncRedis(server=self.server),
            fakeredis.FakeAsyncRedis(server=self.server),
        )


def fleet(settings: Settings) -> Local:
    """Submit to Celery, records and events in the settings' Redis."""
    rt = Runtime.build(settings)
    queue = CeleryQueue(client_app(settings), settings.default_queue)
    return Local(rt, Dispatcher(rt, queue), engine=history_engine(settings))


def embedded(settings: Settings) -> Local:
    """The whole product in this process: an in-process Redis, tasks in threads."""
    server = fakeredis.FakeServer()
    rt = Runtime.build(settings, fakeredis.FakeRedis(server=server))
    threads = ThreadQueue(rt)
    presence = Presence(
        rt.redis,
        rt.keys,
        threads.worker,
        queues=[settings.default_queue],
        labels={},
        concurrency=0,  # threads: no bound
        running=threads.running,
        interval_s=settings.host_refresh_interval_s,
    )
    return Local(rt, Dispatcher(rt, threads), server, history_engine(settings), presence)


def local(settings: Settings) -> Local:
    # Whatever this process finishes (a cancel, the reaper, embedded runs) it may notify.
    webhooks.install()
    return embedded(settings) if settings.embedded else fleet(settings)


class ReaperService:
    """The lost-worker reaper beside the relay (api.dispatch.Service), so that an execution
    ends even when no worker is left to notice. It only reads and publishes: it never signals
    a process (no execution is local to the relay)."""

    def __init__(self, runtime: Runtime, tasks: TaskQueue) -> None:
        self._runtime = runtime
        self._tasks = tasks
        self._stop: threading.Event | None = None

    def start(self) -> None:
        self._stop = start_reaper(self._runtime, self._tasks, None)

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
        self._runtime.publisher.close(timeout_s=2)
