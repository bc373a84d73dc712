"""The runtime of one relay process: its Redis clients, hub, store, authenticator, counters."""

from __future__ import annotations

import contextlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aioredis

from api.auth import Authenticator
from api.feed import AllFeed, ExecutionFeed
from api.hub import Hub
from api.options import RelayOptions
from api.store import Store
from events.keys import Keys
from events.settings import Settings
from worker.dispatch import Dispatcher

log = logging.getLogger(__name__)

DROPPED_STAT = "clients_dropped"


def make_async_redis(
    url: str, *, max_connections: int | None = None, **kwargs: Any
) -> aioredis.Redis:
    """Like `events.publisher.make_redis`: bounded connect and read times, never forever.

    With `max_connections`, requests past it wait (up to 5 s) for a free connection instead of
    failing: a thousand streams opening at once must not see "Too many connections".
    """
    opts: dict[str, Any] = {"socket_connect_timeout": 2.0, "socket_timeout": 5.0}
    opts.update(kwargs)
    if max_connections is None:
        return aioredis.Redis.from_url(url, **opts)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=5.0, **opts
    )
    return aioredis.Redis(connection_pool=pool)


@dataclass
class Relay:
    settings: Settings
    options: RelayOptions
    dispatcher: Dispatcher
    redis: aioredis.Redis
    hub: Hub
    store: Store
    auth: Authenticator
    clients: dict[str, int] = field(default_factory=lambda: {"sse": 0, "ws": 0})

    @classmethod
    async def start(
        cls, settings: Settings, dispatcher: Dispatcher, redis_url: str, options: RelayOptions
    ) -> Relay:
        keys = Keys(settings.key_prefix)
        client = make_async_redis(redis_url, max_connections=options.redis_max_connections)
        name = f"cloudops-relay-{uuid.uuid4().hex[:8]}"
        hub_client = make_async_redis(
            redis_url, socket_timeout=None, health_check_interval=0, client_name=name
        )
        hub = Hub(
            hub_client,
            ping_interval_s=options.hub_ping_interval_s,
            ping_timeout_s=options.hub_ping_timeout_s,
            reconnect_max_s=options.hub_reconnect_max_s,
            check_interval_s=options.lost_message_check_s,
        )
        await hub.start()
        auth = Authenticator(settings.api_tokens, client, keys, settings.stream_ticket_ttl_s)
        if not auth.configured:
            log.warning(
                "CLOUDOPS_API_TOKENS is empty: the relay refuses every data route until a token"
                " is configured"
            )
        return cls(settings, options, dispatcher, client, hub, Store(client, keys), auth)

    async def stop(self) -> None:
        await self.hub.stop()
        await self.redis.aclose()

    @property
    def keys(self) -> Keys:
        return self.store.keys

    def execution_feed(self, execution_id: str, after: int) -> ExecutionFeed:
        return ExecutionFeed(
            self.hub,
            self.store,
            execution_id,
            after,
            options=self.options,
            queue_events=self.settings.client_queue_events,
            tick_s=self._tick_s,
        )

    def all_feed(self) -> AllFeed:
        return AllFeed(
            self.hub,
            self.store,
            options=self.options,
            queue_events=self.settings.client_queue_events,
            tick_s=self._tick_s,
        )

    @property
    def _tick_s(self) -> float:
        # How often an idle stream wakes up: SSE pings go out within half an interval late.
        return max(0.05, min(5.0, self.settings.sse_ping_interval_s / 2))

    async def note_dropped(self, kind: str, detail: str) -> None:
        log.warning("closing a slow %s client: %s", kind, detail)
        with contextlib.suppress(redis.RedisError, OSError):
            await self.store.incr_stat(DROPPED_STAT)
