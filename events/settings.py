"""One settings object, read from the environment once at start-up and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace

from events.errors import ConfigError

MIB = 1024 * 1024
ENV_PREFIX = "CLOUDOPS_"


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
    def env_names(cls) -> tuple[str, ...]:
        """Every variable read: CLOUDOPS_ + the field's name in capitals."""
        return tuple(ENV_PREFIX + f.name.upper() for f in fields(cls))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            name = ENV_PREFIX + f.name.upper()
            raw = e.get(name)
            if raw is None or raw == "":
                continue
            kind = str(f.type)
            if kind.startswith("tuple"):
                values[f.name] = _list(e, name)
            elif kind == "int":
                values[f.name] = _int(e, name, 0)
            elif kind == "float":
                values[f.name] = _float(e, name, 0.0)
            else:
                values[f.name] = raw
        return cls(**values)  # type: ignore[arg-type]
