"""The runtime of one relay process: its Redis clients, hub, store, authenticator, counters."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from api.audit import AuditWriter
from api.auth import Authenticator
from api.dispatch import Dispatcher, HealthCheck
from api.drops import DropLedger
from api.feed import Admit, AllFeed, ExecutionFeed
from api.hub import Hub
from api.limits import StreamSlots
from api.metrics import RelayMetrics
from api.options import RelayOptions
from api.scope import ExecutionQueues
from api.store import Store
from events.clients import async_redis_for
from events.db.audit import AuditLog
from events.db.playbooks import PlaybookStore
from events.db.query import History
from events.db.schedules import ScheduleStore
from events.db.tokens import TokenStore
from events.keys import Keys
from events.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelayClients:
    """The relay's Redis clients: one for reads (records, history, tickets), and one whose pool
    holds only the hub's pub/sub connection (no read timeout: it waits for messages)."""

    redis: aioredis.Redis
    hub: aioredis.Redis

    @classmethod
    def from_settings(cls, settings: Settings, options: RelayOptions) -> RelayClients:
        """From CLOUDOPS_REDIS_URL, or through the sentinels to the current master."""
        name = f"cloudops-relay-{uuid.uuid4().hex[:8]}"
        return cls(
            async_redis_for(settings, max_connections=options.redis_max_connections),
            async_redis_for(
                settings, socket_timeout=None, health_check_interval=0, client_name=name
            ),
        )


@dataclass
class Relay:
    settings: Settings
    options: RelayOptions
    dispatcher: Dispatcher
    redis: aioredis.Redis
    hub: Hub
    store: Store
    auth: Authenticator
    slots: StreamSlots
    clients: dict[str, int] = field(default_factory=lambda: {"sse": 0, "ws": 0})
    metrics: RelayMetrics = field(default_factory=RelayMetrics)
    # Dependencies besides Redis that /healthz checks (the broker).
    checks: tuple[HealthCheck, ...] = ()
    # Saved playbooks (CONTRACT §10), in the history database; None: there is none.
    playbooks: PlaybookStore | None = None
    # Schedules (CONTRACT §10), in the same database; None: there is none.
    schedules: ScheduleStore | None = None
    # Named API tokens (CONTRACT §9), in the history database; None: only CLOUDOPS_API_TOKENS.
    tokens: TokenStore | None = None
    # The audit log's writer (api.audit), in the same database; None: nothing is recorded.
    audit: AuditWriter | None = None
    drops: DropLedger = field(init=False)
    queues: ExecutionQueues = field(init=False)

    def __post_init__(self) -> None:
        self.drops = DropLedger(self.store)
        self.queues = ExecutionQueues(self.store, self.settings.default_queue)

    @classmethod
    async def start(
        cls,
        settings: Settings,
        dispatcher: Dispatcher,
        options: RelayOptions,
        clients: RelayClients | None = None,
        history: History | None = None,
        tokens: TokenStore | None = None,
        audit: AuditLog | None = None,
    ) -> Relay:
        keys = Keys(settings.key_prefix)
        if clients is None:
            clients = RelayClients.from_settings(settings, options)
        client = clients.redis
        hub = Hub(clients.hub, options)
        await hub.start()
        auth = Authenticator(
            settings.api_tokens,
            client,
            keys,
            settings.stream_ticket_ttl_s,
            store=tokens,
            cache_ttl_s=settings.token_cache_ttl_s,
        )
        if not auth.configured:
            log.warning(
                "CLOUDOPS_API_TOKENS is empty and there is no database for named tokens: the"
                " relay refuses every data route until a token is configured"
            )
        slots = StreamSlots.from_settings(settings)
        store = Store(client, keys, history)
        relay = cls(settings, options, dispatcher, client, hub, store, auth, slots, tokens=tokens)
        if audit is not None:
            relay.audit = AuditWriter(audit)
            relay.audit.start()
        return relay

    async def stop(self) -> None:
        if self.audit is not None:
            await self.audit.stop()
        await self.drops.close()
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

    def all_feed(self, admit: Admit | None = None) -> AllFeed:
        return AllFeed(
            self.hub,
            self.store,
            admit=admit,
            options=self.options,
            queue_events=self.settings.client_queue_events,
            tick_s=self._tick_s,
        )

    @property
    def _tick_s(self) -> float:
        # How often an idle stream wakes up: SSE pings go out within half an interval late.
        return max(0.05, min(5.0, self.settings.sse_ping_interval_s / 2))

    async def note_dropped(self, kind: str, detail: str, reason: str = "stalled") -> None:
        """A stream client closed by the relay: `reason` is stalled (its socket took nothing
        for the stall limit), buffer (it left too many bytes waiting) or revoked (its token)."""
        self.drops.note(kind, detail, reason)
