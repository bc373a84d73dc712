"""Per-process resources of a worker: settings, one Redis client, one publisher, the records.

redis-py connection pools do not survive fork (the prefork pool forks after start-up), so each
process builds its own on first use. Embedded mode builds one on an in-process Redis (the
composition root, cli/, passes its client in).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

from redis import Redis

from events.clients import redis_for
from events.errors import ConfigError
from events.fan_out import FanOutStore
from events.keys import Keys
from events.publisher import Publisher
from events.record_store import RecordStore
from events.settings import Settings
from events.stats import observe_completion

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    keys: Keys
    redis: Redis
    publisher: Publisher
    records: RecordStore
    fan_out: FanOutStore

    @classmethod
    def build(cls, settings: Settings, client: Redis | None = None) -> Runtime:
        if client is None:
            if settings.embedded:
                raise ConfigError("CLOUDOPS_REDIS_URL is not set: a worker needs Redis")
            client = redis_for(settings)
        keys = Keys(settings.key_prefix)
        redis_client = client

        def on_result(execution_id: str, event: str, seq: int) -> None:
            # The rules give one execution_complete an id, fleet-wide: count the run once.
            if event == "execution_complete" and seq > 0:
                try:
                    observe_completion(redis_client, keys, execution_id)
                except Exception:
                    log.warning("metrics of %s not recorded", execution_id, exc_info=True)

        return cls(
            settings=settings,
            keys=keys,
            redis=client,
            publisher=Publisher(client, keys, settings, on_result=on_result),
            records=RecordStore(client, keys, settings),
            fan_out=FanOutStore(client, keys, settings),
        )

    def close(self) -> None:
        self.publisher.close(timeout_s=5)
        self.redis.close()


_lock = threading.Lock()
_runtime: Runtime | None = None
_pid = 0


def get_runtime(settings: Settings) -> Runtime:
    """This process's runtime (a Celery pool process builds its own after the fork)."""
    global _runtime, _pid
    with _lock:
        if _runtime is None or _pid != os.getpid():
            _runtime = Runtime.build(settings)
            _pid = os.getpid()
        return _runtime
