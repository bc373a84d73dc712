"""Webhook notifications of an execution's end (CONTRACT §10): which webhooks want it, the body
and its signature, and the record of each delivery attempt.

No HTTP and no Celery here: worker.notify schedules and retries the deliveries, cli/ posts them,
the relay reads the attempts back (`GET /api/executions/{id}/notifications`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import orjson
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from redis import Redis

from events.keys import Keys
from events.records import as_str, record_from_hash
from events.vocabulary import TERMINAL_STATUSES, CommandType, Status

SIGNATURE_HEADER = "X-Cloudops-Signature"
# Where a playbook run's record spec (worker.playbook.run) keeps the playbook's `notify`.
SPEC_NOTIFY = "notify"


def sign(body: bytes, secret: str) -> str:
    """The signature header's value: `sha256=<hex HMAC-SHA256 of the body>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def is_http_url(url: str) -> bool:
    """An absolute http:// or https:// URL with a host (a webhook, the public URL)."""
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # a malformed netloc (an unclosed IPv6 bracket, a bad port)
        return False


def mask_url(url: str) -> str:
    """A webhook URL as logs and attempt records show it: tokens ride in query strings (and
    sometimes in a password), so those are `***`."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = "***" if parts.query else ""
    fragment = "***" if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


@dataclass(frozen=True)
class NotifyTarget:
    """One webhook and the statuses it is told about."""

    webhook: str
    on: frozenset[Status] = TERMINAL_STATUSES

    def wants(self, status: Status) -> bool:
        return status in self.on

    def spec(self) -> dict[str, Any]:
        """As a playbook run's record spec holds it."""
        return {"webhook": self.webhook, "on": sorted(self.on)}


def targets(spec: Mapping[str, Any] | None, every_execution: Sequence[str]) -> list[NotifyTarget]:
    """An execution's webhooks, in a stable order (retries name them by index): its playbook's
    `notify`, then CLOUDOPS_NOTIFY_WEBHOOKS, told about every end."""
    found = [
        NotifyTarget(str(t["webhook"]), frozenset(Status(s) for s in t["on"]))
        for t in (spec or {}).get(SPEC_NOTIFY) or []
    ]
    return found + [NotifyTarget(url) for url in every_execution]


def notification_body(raw_record: Mapping[str, str], console_url: str | None) -> bytes:
    """The POSTed JSON, from the ended execution's record; `url` is its page in the console
    when the relay's public address (CLOUDOPS_PUBLIC_URL) is known."""
    record = record_from_hash(raw_record)
    url = None
    if console_url:
        url = f"{console_url.rstrip('/')}/#{quote(record.execution_id, safe='')}"
    return orjson.dumps(
        {
            "executionId": record.execution_id,
            "status": record.status,
            "playbookName": record.command if record.command_type is CommandType.PLAYBOOK else None,
            "exitCode": record.exit_code,
            "durationMs": record.duration_ms,
            "error": record.error,
            "url": url,
        }
    )


class Attempt(BaseModel):
    """One delivery attempt, as `GET /api/executions/{id}/notifications` lists it."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    at: str
    url: str  # masked (mask_url)
    attempt: int  # 1 for the first try of this webhook
    status_code: int | None = None
    error: str | None = None
    delivered: bool

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def decode_attempts(items: Iterable[bytes | str]) -> list[Attempt]:
    return [Attempt.model_validate_json(as_str(item)) for item in items]


class AttemptStore:
    """The attempts of each execution's notifications, beside its record."""

    def __init__(self, client: Redis, keys: Keys, ttl_s: int) -> None:
        self._redis = client
        self._keys = keys
        self._ttl_s = ttl_s

    def claim(self, execution_id: str) -> bool:
        """True for the first caller only: that one notifies the execution's webhooks."""
        return bool(
            self._redis.set(self._keys.notify_claim(execution_id), "1", nx=True, ex=self._ttl_s)
        )

    def add(self, execution_id: str, attempt: Attempt) -> None:
        key = self._keys.notifications(execution_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.rpush(key, attempt.model_dump_json(by_alias=True))
        pipe.expire(key, self._ttl_s)
        pipe.execute()

    def attempts(self, execution_id: str) -> list[Attempt]:
        items: list[bytes | str] = self._redis.lrange(self._keys.notifications(execution_id), 0, -1)
        return decode_attempts(items)
