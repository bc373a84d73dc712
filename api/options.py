"""The relay's own knobs beyond `events.settings.Settings`: constructor keywords, with defaults."""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB


@dataclass(frozen=True)
class RelayOptions:
    """How the relay treats its clients. Field names carry their unit."""

    # A client's inbox of live events. Bounded in bytes as well as in count (events can be
    # 64 KiB): past either bound the hub drops events for that client only, and the client
    # catches up from the history.
    client_queue_bytes: int = 1 * MIB
    # A client whose socket takes nothing for this long is closed with a reason; it resumes
    # from its last id (Last-Event-ID / "after").
    stall_limit_s: float = 30.0
    # Redis may lose a pub/sub message without a word: this often the hub compares each
    # followed execution's counter with what its channel delivered (one GET per execution).
    lost_message_check_s: float = 1.0
    # Last resort, per client: nothing arrived for this long, read the history anyway.
    idle_refill_s: float = 15.0
    # Bytes of history read per round trip while a client catches up.
    history_page_bytes: int = 256 * KIB
    # The SSE `retry:` hint: how long a browser waits before it reconnects.
    sse_retry_ms: int = 2000
    max_ws_subscriptions: int = 64
    # Connections to Redis for reads (records, history); past it requests wait their turn.
    redis_max_connections: int = 64
    # /metrics counts the status of this many most recent executions.
    metrics_recent_executions: int = 1000
    # The hub pings Redis this often on its pub/sub connection and reconnects when no answer
    # came within `hub_ping_timeout_s`.
    hub_ping_interval_s: float = 5.0
    hub_ping_timeout_s: float = 5.0
    hub_reconnect_max_s: float = 2.0
