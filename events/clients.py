"""Redis clients for our keys, sync and async: bounded connect and read times, never forever.

`redis_for(settings)` / `async_redis_for(settings)` are the clients of a process: straight to
CLOUDOPS_REDIS_URL, or through Sentinel (CLOUDOPS_REDIS_SENTINELS) to whichever server is the
master now. A Sentinel-managed connection asks the sentinels for the master each time it
connects, and one still open to a master that was demoted gets READONLY and is dropped, so
every reader and writer follows a failover by reconnecting, which they all do already.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as aiosentinel
import redis.sentinel
from redis.connection import SSLConnection, parse_url

from events.settings import Settings

# A sentinel answers from memory: a second is long; a dead one is skipped for the next.
_SENTINEL_TIMEOUT_S = 1.0


def make_redis(url: str, **kwargs: object) -> redis.Redis:
    """A client for our keys. No socket timeout on reads would hang forever on a dead peer;
    5 s is redis-py 8's default and shorter than any blocking read we issue."""
    opts: dict[str, object] = {
        "socket_connect_timeout": 2.0,
        "socket_timeout": 5.0,
        "health_check_interval": 10,
    }
    opts.update(kwargs)
    return redis.Redis.from_url(url, **opts)


def make_async_redis(
    url: str, *, max_connections: int | None = None, **kwargs: Any
) -> aioredis.Redis:
    """Like `make_redis`, for asyncio. With `max_connections`, requests past it wait (up to
    5 s) for a free connection instead of failing: a thousand streams opening at once must not
    see "Too many connections"."""
    opts: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 5.0}
    opts.update(kwargs)
    if max_connections is None:
        return aioredis.Redis.from_url(url, **opts)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=5.0, **opts
    )
    return aioredis.Redis(connection_pool=pool)


def redis_for(settings: Settings, **kwargs: Any) -> redis.Redis:
    """This process's client for our keys (`make_redis` options, overridden by `kwargs`)."""
    if not settings.redis_sentinels:
        if settings.redis_url is None:
            raise ValueError("no Redis configured (CLOUDOPS_REDIS_URL or CLOUDOPS_REDIS_SENTINELS)")
        return make_redis(settings.redis_url, **kwargs)
    opts: dict[str, Any] = {
        "socket_connect_timeout": 2.0,
        "socket_timeout": 5.0,
        "health_check_interval": 10,
    }
    opts |= _master_options(settings) | kwargs
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        settings.sentinel_addresses, sentinel_kwargs=_sentinel_options(settings)
    )
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        settings.redis_sentinel_master, **opts
    )
    return client


def async_redis_for(
    settings: Settings, *, max_connections: int | None = None, **kwargs: Any
) -> aioredis.Redis:
    """`redis_for` for asyncio, with `make_async_redis`'s waiting pool."""
    if not settings.redis_sentinels:
        if settings.redis_url is None:
            raise ValueError("no Redis configured (CLOUDOPS_REDIS_URL or CLOUDOPS_REDIS_SENTINELS)")
        return make_async_redis(settings.redis_url, max_connections=max_connections, **kwargs)
    opts: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 5.0}
    opts |= _master_options(settings) | kwargs
    if max_connections is not None:
        opts |= {
            "connection_pool_class": BlockingSentinelConnectionPool,
            "max_connections": max_connections,
            "timeout": 5.0,
        }
    sentinel = aiosentinel.Sentinel(  # type: ignore[no-untyped-call]
        settings.sentinel_addresses, sentinel_kwargs=_sentinel_options(settings)
    )
    client: aioredis.Redis = sentinel.master_for(settings.redis_sentinel_master, **opts)
    return client


class BlockingSentinelConnectionPool(
    aiosentinel.SentinelConnectionPool, aioredis.BlockingConnectionPool
):
    """Sentinel's pool (connections to the current master) that waits for a free connection
    like BlockingConnectionPool, past `max_connections`."""


def _sentinel_options(settings: Settings) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "socket_connect_timeout": _SENTINEL_TIMEOUT_S,
        "socket_timeout": _SENTINEL_TIMEOUT_S,
    }
    if settings.redis_sentinel_password:
        opts["password"] = settings.redis_sentinel_password
    return opts


def _master_options(settings: Settings) -> dict[str, Any]:
    """What CLOUDOPS_REDIS_URL says of the master besides where it is: database, credentials,
    TLS (its ssl_* query options included)."""
    if settings.redis_url is None:
        return {}
    opts: dict[str, Any] = dict(parse_url(settings.redis_url))  # type: ignore[no-untyped-call]
    for name in ("host", "port", "path", "unix_socket_path"):
        opts.pop(name, None)
    if opts.pop("connection_class", None) is SSLConnection:
        opts["ssl"] = True  # SentinelConnectionPool then uses its own TLS connection class
    return opts
