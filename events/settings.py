"""One settings object, read from the environment once at start-up and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from events.errors import ConfigError

MIB = 1024 * 1024


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from e


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as e:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from e


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in env.get(name, "").split(",") if p.strip())


@dataclass(frozen=True)
class Settings:
    """Every knob of the system. Field names carry their unit."""

    redis_url: str | None = None
    broker_url: str | None = None
    key_prefix: str = "cloudops"
    api_tokens: tuple[str, ...] = ()
    api_url: str | None = None
    api_token: str | None = field(default=None, repr=False)
    cors_origins: tuple[str, ...] = ()
    # Events and records live this long after their last event (StackStorm keeps 7 days).
    history_ttl_s: int = 7 * 24 * 3600
    # Envelope bytes of output kept per execution; past it the stream says `truncated`.
    max_output_bytes: int = 64 * MIB
    flush_interval_ms: int = 20
    max_chunk_bytes: int = 64 * 1024
    # Events waiting for an unreachable Redis; past it output is dropped and counted.
    publish_buffer_bytes: int = 64 * MIB
    kill_grace_s: float = 5.0
    # On a worker's warm shutdown, running commands get this long to finish before they are
    # stopped cleanly (their tree killed, `failed: worker shut down`).
    shutdown_grace_s: float = 300.0
    partial_output_bytes: int = 1 * MIB
    # A running execution's lease; a worker that stops renewing it is declared lost.
    lease_ttl_s: int = 8
    heartbeat_interval_s: float = 1.0
    cancel_poll_interval_s: float = 0.1
    secret_env: tuple[str, ...] = ()
    default_queue: str = "cloudops"
    stream_ticket_ttl_s: int = 60
    sse_ping_interval_s: float = 15.0
    client_queue_events: int = 1024

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: run in-process with an in-memory bus."""
        return self.redis_url is None

    @property
    def effective_broker_url(self) -> str | None:
        return self.broker_url or self.redis_url

    @property
    def secret_names(self) -> tuple[str, ...]:
        return ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", *self.secret_env)

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        p = "CLOUDOPS_"
        d = cls()
        return cls(
            redis_url=e.get(p + "REDIS_URL") or None,
            broker_url=e.get(p + "BROKER_URL") or None,
            key_prefix=e.get(p + "KEY_PREFIX") or d.key_prefix,
            api_tokens=_list(e, p + "API_TOKENS"),
            api_url=e.get(p + "API_URL") or None,
            api_token=e.get(p + "API_TOKEN") or None,
            cors_origins=_list(e, p + "CORS_ORIGINS"),
            history_ttl_s=_int(e, p + "HISTORY_TTL_S", d.history_ttl_s),
            max_output_bytes=_int(e, p + "MAX_OUTPUT_BYTES", d.max_output_bytes),
            flush_interval_ms=_int(e, p + "FLUSH_INTERVAL_MS", d.flush_interval_ms),
            max_chunk_bytes=_int(e, p + "MAX_CHUNK_BYTES", d.max_chunk_bytes),
            publish_buffer_bytes=_int(e, p + "PUBLISH_BUFFER_BYTES", d.publish_buffer_bytes),
            kill_grace_s=_float(e, p + "KILL_GRACE_S", d.kill_grace_s),
            shutdown_grace_s=_float(e, p + "SHUTDOWN_GRACE_S", d.shutdown_grace_s),
            partial_output_bytes=_int(e, p + "PARTIAL_OUTPUT_BYTES", d.partial_output_bytes),
            lease_ttl_s=_int(e, p + "LEASE_TTL_S", d.lease_ttl_s),
            heartbeat_interval_s=_float(e, p + "HEARTBEAT_INTERVAL_S", d.heartbeat_interval_s),
            cancel_poll_interval_s=_float(
                e, p + "CANCEL_POLL_INTERVAL_S", d.cancel_poll_interval_s
            ),
            secret_env=_list(e, p + "SECRET_ENV"),
            default_queue=e.get(p + "DEFAULT_QUEUE") or d.default_queue,
            stream_ticket_ttl_s=_int(e, p + "STREAM_TICKET_TTL_S", d.stream_ticket_ttl_s),
            sse_ping_interval_s=_float(e, p + "SSE_PING_INTERVAL_S", d.sse_ping_interval_s),
            client_queue_events=_int(e, p + "CLIENT_QUEUE_EVENTS", d.client_queue_events),
        )
