"""Per-process resources of a worker: settings, one Redis client, one publisher, the records.

redis-py connection pools do not survive fork (the prefork pool forks after start-up), so each
process builds its own on first use.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

import redis

from events.errors import ConfigError
from events.keys import Keys
from events.publisher import Publisher, make_redis
from events.records import RecordStore
from events.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    keys: Keys
    redis: redis.Redis
    publisher: Publisher
    records: RecordStore

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        if settings.redis_url is None:
            raise ConfigError("CLOUDOPS_REDIS_URL is not set: a worker needs Redis")
        client = make_redis(settings.redis_url)
        keys = Keys(settings.key_prefix)
        return cls(
            settings=settings,
            keys=keys,
            redis=client,
            publisher=Publisher(client, keys, settings),
            records=RecordStore(client, keys, settings),
        )


_lock = threading.Lock()
_runtime: Runtime | None = None
_pid = 0


def get_runtime(settings: Settings) -> Runtime:
    global _runtime, _pid
    with _lock:
        if _runtime is None or _pid != os.getpid():
            _runtime = Runtime.build(settings)
            _pid = os.getpid()
        return _runtime
