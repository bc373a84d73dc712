"""One settings object, read from the environment once at start-up and passed down.

`Settings.from_env()` reads every `CLOUDOPS_<FIELD>` variable (pydantic-settings), validates
it, and names each bad variable in one ConfigError. `Settings(...)` built in code takes only
what it is given (tests and the composition root pass values explicitly).
"""

from __future__ import annotations

import os
import tempfile
from contextvars import ContextVar
from typing import Annotated, Any

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from events.errors import ConfigError
from events.notifications import is_http_url, mask_url

MIB = 1024 * 1024
ENV_PREFIX = "CLOUDOPS_"

# Whether the settings being built read the environment (only inside from_env()).
_READ_ENV: ContextVar[bool] = ContextVar("cloudops_read_env", default=False)

# A comma-separated list in the environment (not JSON, as pydantic-settings would expect).
CommaList = Annotated[tuple[str, ...], NoDecode]


def _default_state_dir() -> str:
    return os.path.join(tempfile.gettempdir(), f"cloudops-{os.getuid()}")


class Settings(BaseSettings):
    """Every knob of the system. Field names carry their unit."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        frozen=True,
        extra="forbid",
        populate_by_name=True,
    )

    redis_url: str | None = None
    broker_url: str | None = None
    # Redis through Sentinel (CONTRACT §11): the sentinels (host:port, ...) and the name of the
    # master they watch. CLOUDOPS_REDIS_URL, if set, then gives only the database, password
    # and TLS of the master; its host and port are whatever the sentinels say.
    redis_sentinels: CommaList = ()
    redis_sentinel_master: str = "mymaster"
    # The sentinels' own password (their `requirepass`), if they have one.
    redis_sentinel_password: str | None = Field(default=None, repr=False)
    # An event counts as published once this many replicas hold it (WAIT): a failover then
    # loses none of them. 0: once the master holds it (replication is asynchronous).
    redis_min_replicas: int = Field(default=0, ge=0)
    # How long one WAIT blocks before the publisher asks again (it waits until it is met).
    redis_replica_wait_ms: int = Field(default=1000, ge=1)
    # Connecting to the broker and sending a task give up after about this long (each of a
    # few tries), so a dead broker is a 503 within seconds, not a hang.
    broker_timeout_s: float = Field(default=2.0, gt=0)
    key_prefix: str = "cloudops"
    api_tokens: CommaList = Field(default=(), repr=False)
    api_url: str | None = None
    api_token: str | None = Field(default=None, repr=False)
    cors_origins: CommaList = ()
    # Events and records live this long after their last event (StackStorm keeps 7 days).
    history_ttl_s: int = Field(default=7 * 24 * 3600, ge=1)
    # UTF-8 bytes of output envelopes kept per execution; past it the stream says `truncated`.
    max_output_bytes: int = Field(default=64 * MIB, ge=1)
    flush_interval_ms: int = Field(default=20, ge=0)
    max_chunk_bytes: int = Field(default=64 * 1024, ge=4)
    # Events waiting for an unreachable Redis; past it output is dropped and counted.
    publish_buffer_bytes: int = Field(default=64 * MIB, ge=1)
    kill_grace_s: float = Field(default=5.0, ge=0)
    # Each command under a guard, its tree's child subreaper, that kills everything the
    # command started when the run ends or the process running it dies (worker/guard.py).
    # Off: the command's session only, and what a lost run left is killed by the next worker
    # to start on the host.
    guard: bool = True
    # Where a host keeps the record of each running command's guard and session (pid and start
    # time), for the next worker to start here to kill what a lost execution left.
    state_dir: str = Field(default_factory=lambda: _default_state_dir())
    # On a worker's warm shutdown, running commands get this long to finish before they are
    # stopped cleanly (their tree killed, `failed: worker shut down`).
    shutdown_grace_s: float = Field(default=300.0, ge=0)
    # How much of the output's end execution_cancelled.partialOutput carries, in characters
    # (CLOUDOPS_PARTIAL_OUTPUT_BYTES, its old name, is still read).
    partial_output_chars: int = Field(
        default=1 * MIB,
        ge=0,
        validation_alias=AliasChoices(
            "partial_output_chars", "CLOUDOPS_PARTIAL_OUTPUT_CHARS", "CLOUDOPS_PARTIAL_OUTPUT_BYTES"
        ),
    )
    # A running execution's lease; a worker that stops renewing it is declared lost.
    lease_ttl_s: int = Field(default=8, ge=1)
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    # How often a worker rewrites its entry in the host registry (events/hosts.py); a host not
    # seen for 10 s is offline, so this stays well below that.
    host_refresh_interval_s: float = Field(default=2.0, gt=0, le=5)
    cancel_poll_interval_s: float = Field(default=0.1, gt=0)
    secret_env: CommaList = ()
    default_queue: str = "cloudops"
    stream_ticket_ttl_s: int = Field(default=60, ge=1)
    sse_ping_interval_s: float = Field(default=15.0, gt=0)
    client_queue_events: int = Field(default=1024, ge=1)
    # -- what the relay allows one client (issue 20); the README's "Limits" says why each.
    # A request body, checked from Content-Length and while it is read, before any parsing.
    max_body_bytes: int = Field(default=2 * MIB, ge=1)
    # The whole body must arrive within this long of the headers.
    body_timeout_s: float = Field(default=10.0, gt=0)
    # The request line and headers of one request, and how long they may take to arrive.
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    header_timeout_s: float = Field(default=10.0, gt=0)
    # Open connections of one relay process (streams included); past it: 503 and close.
    max_connections: int = Field(default=1000, ge=1)
    # Open streams (SSE responses and WebSockets) per token and per client address.
    max_streams_per_token: int = Field(default=200, ge=1)
    max_streams_per_address: int = Field(default=100, ge=1)
    # Bytes one stream may leave waiting while its socket takes nothing (live events it has
    # not taken, its write buffer, the kernel's send queue); past it the client is dropped.
    stream_buffer_bytes: int = Field(default=4 * MIB, ge=64 * 1024)
    # The kernel send buffer of a stream's socket (SO_SNDBUF; Linux doubles it).
    stream_socket_buffer_bytes: int = Field(default=128 * 1024, ge=4096)
    # How often an open stream asks again whether its token is still valid (revocation).
    stream_auth_recheck_s: float = Field(default=2.5, gt=0)
    # How long a relay trusts its answer about a named token (CONTRACT §9): a revoked or
    # expired one is refused by every relay within this, so it stays a few seconds at most.
    token_cache_ttl_s: float = Field(default=2.0, ge=0, le=4)
    # -- history in a database (CONTRACT §8). A SQLAlchemy URL; its password is a secret (never
    # in a repr, a log line or an error: `database_url_masked`). None: a fleet keeps history
    # in Redis only; embedded mode uses its SQLite file.
    database_url: str | None = Field(default=None, repr=False)
    # Executions queued longer ago than this are pruned, except the newest `retention_min_keep`.
    retention_days: int = Field(default=90, ge=1)
    retention_min_keep: int = Field(default=1000, ge=0)
    # -- webhook notifications (CONTRACT §10). Webhooks told about every execution's end,
    # besides each playbook's own `notify`; their query strings may hold tokens (never logged).
    notify_webhooks: CommaList = Field(default=(), repr=False)
    # The HMAC key of `X-Cloudops-Signature`; unset: notifications go unsigned.
    webhook_secret: str | None = Field(default=None, repr=False)
    # The first retry of a failed delivery waits about this long, each next one twice as long
    # (at most 2 minutes), all within 10 minutes (worker.notify).
    notify_backoff_s: float = Field(default=5.0, gt=0)
    # Where users reach the relay's console (https://ops.example.com): notifications then link
    # to the execution's page (`url`); unset: `url` is null.
    public_url: str | None = None

    @field_validator(
        "api_tokens",
        "cors_origins",
        "secret_env",
        "redis_sentinels",
        "notify_webhooks",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(p.strip() for p in value.split(",") if p.strip())
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _host_ports(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            host, _, port = item.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"must be host:port, comma-separated ({item!r} is not)")
        return value

    @field_validator("notify_webhooks")
    @classmethod
    def _webhook_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            if not is_http_url(url):
                raise ValueError(
                    f"must be http(s) URLs, comma-separated ({mask_url(url)!r} is not)"
                )
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is not None and not is_http_url(value):
            raise ValueError("must be an http(s) URL")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings) if _READ_ENV.get() else (init_settings,)

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: run in-process on an in-process Redis."""
        return self.redis_url is None and not self.redis_sentinels

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        out = []
        for item in self.redis_sentinels:
            host, _, port = item.rpartition(":")
            out.append((host.strip("[]"), int(port)))
        return out

    @property
    def effective_broker_url(self) -> str | None:
        """The broker's URL as configured; None when it is the events' Redis through Sentinel
        (`broker_on_sentinel`: worker.app builds Celery's sentinel:// URL) or when embedded."""
        if self.broker_url or self.redis_sentinels:
            return self.broker_url
        return self.redis_url

    @property
    def broker_on_sentinel(self) -> bool:
        """The broker is the events' Redis, found through the sentinels."""
        return self.broker_url is None and bool(self.redis_sentinels)

    @property
    def database_url_masked(self) -> str | None:
        """The database URL with its password as `***`, for messages."""
        if self.database_url is None:
            return None
        user, at, host = self.database_url.rpartition("@")
        scheme, sep, cred = user.partition("://")
        if not at or not sep or ":" not in cred:
            return self.database_url
        return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"

    @property
    def secret_names(self) -> tuple[str, ...]:
        return ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", *self.secret_env)

    def with_(self, **changes: object) -> Settings:
        return self.model_copy(update=changes)

    @classmethod
    def env_names(cls) -> tuple[str, ...]:
        """Every variable read: CLOUDOPS_ + the field's name in capitals, and old names."""
        names: list[str] = []
        for name, info in cls.model_fields.items():
            names.append(ENV_PREFIX + name.upper())
            alias = info.validation_alias
            if isinstance(alias, AliasChoices):
                names += [a for a in alias.choices if isinstance(a, str) and a.isupper()]
        return tuple(dict.fromkeys(names))

    @classmethod
    def from_env(cls) -> Settings:
        """The settings of this process, from its CLOUDOPS_* environment."""
        token = _READ_ENV.set(True)
        try:
            return cls()
        except ValidationError as e:
            raise ConfigError(_describe(e)) from None
        finally:
            _READ_ENV.reset(token)


def _describe(error: ValidationError) -> str:
    """One line naming every bad variable: `CLOUDOPS_X must be an integer, got 'y'; ...`."""
    problems = []
    for err in error.errors():
        loc = err.get("loc") or ("?",)
        name = str(loc[0])
        var = name if name.isupper() else ENV_PREFIX + name.upper()
        msg = str(err.get("msg", "is invalid")).removeprefix("Value error, ")
        if err.get("type") in ("int_parsing", "int_from_float"):
            msg = "must be an integer"
        elif err.get("type") == "float_parsing":
            msg = "must be a number"
        # A secret's value (a token, a webhook's URL with its query) is never shown.
        field = Settings.model_fields.get(name)
        got = "***" if field is not None and not field.repr else repr(err.get("input"))
        problems.append(f"{var} {msg[:1].lower() + msg[1:]}, got {got}")
    return "; ".join(problems)
