"""/healthz: which dependency of the relay does not answer (its Redis, the broker), each
checked at once and bounded in time, so that a dead one is named within seconds."""

from __future__ import annotations

import asyncio
import logging

import redis
from starlette.concurrency import run_in_threadpool

from api.dispatch import HealthCheck
from api.store import Store

log = logging.getLogger(__name__)

CHECK_TIMEOUT_S = 3.0


async def _redis(store: Store) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await store.ping()
    except (redis.RedisError, OSError, TimeoutError):
        return False
    return True


async def _other(check: HealthCheck) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            await run_in_threadpool(check.check)
    except Exception as e:  # whatever its client raises: it does not answer
        log.warning("health check: the %s does not answer: %s", check.name, e)
        return False
    return True


async def unavailable(store: Store, checks: tuple[HealthCheck, ...]) -> list[str]:
    """The names of the dependencies that do not answer, Redis first; [] when all do."""
    results = await asyncio.gather(_redis(store), *(_other(c) for c in checks))
    names = ["Redis", *(c.name for c in checks)]
    return [name for name, ok in zip(names, results, strict=True) if not ok]
