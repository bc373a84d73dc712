"""The host registry (CONTRACT §7): what each worker says of itself, and the list readers see.

A worker's main process writes its entry (`HostEntry`) every `host_refresh_interval_s`: one
string key per host holding the entry's JSON, and a sorted set of hostnames scored by when each
was last seen (keys.py). Readers (the relay's `GET /api/workers`, `cloudops workers`) list the
hosts seen within `KEEP_S`, sorted by hostname, each `online` while it was seen within
`ONLINE_WINDOW_S` and has not said it stopped. Sync (worker, CLI) and asyncio (relay) clients
go through the same two calls and the same decoding here.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from importlib import metadata
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from events.errors import InvalidRequestError
from events.keys import Keys
from events.requests import split_pair

# A host not seen for this long is offline (CONTRACT §7): five missed refreshes at the default
# interval, so that one slow round trip never flips it.
ONLINE_WINDOW_S = 10.0
# An offline entry stays listed this long after it was last seen, then expires (CONTRACT §7).
KEEP_S = 24 * 3600

# Label keys as Kubernetes spells them (`region`, `tier`, `example.com/role`); values without
# white space, `=` included (a selector splits on the first `=` only).
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"[^\s\x00-\x1f\x7f]{0,253}")


@functools.cache  # read once: a beat every 2 s need not search the installed distributions
def package_version() -> str:
    """This installation's version of cloudops-execution-engine (`0+unknown` from a bare
    checkout)."""
    try:
        return metadata.version("cloudops-execution-engine")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def parse_labels(args: Sequence[str]) -> dict[str, str]:
    """`["k=v", ...]` (`cloudops worker --label`) as a dict; InvalidRequestError (`label`)
    names the first bad one, and a key given twice with two values."""
    out: dict[str, str] = {}
    for arg in args:
        key, value = split_pair(arg, "label", "KEY")
        if not _LABEL_KEY.fullmatch(key):
            raise InvalidRequestError(
                "label",
                f"{key!r} in {arg!r} is not a valid label key (letters, digits, . _ / -,"
                " at most 63, starting and ending with a letter or digit)",
            )
        if not _LABEL_VALUE.fullmatch(value):
            raise InvalidRequestError(
                "label", f"the value of {key} must have no white space (at most 253 characters)"
            )
        if out.get(key, value) != value:
            raise InvalidRequestError("label", f"{key} given twice: {out[key]!r} and {value!r}")
        out[key] = value
    return out


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HostEntry(BaseModel):
    """One worker as it describes itself; camelCase in Redis as on the wire."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)

    hostname: str
    queues: tuple[str, ...] = ()
    labels: dict[str, str] = Field(default_factory=dict)
    concurrency: int = 0
    running: int = 0
    version: str = ""
    last_seen: datetime
    # Written once by a clean shutdown: offline at once, not 10 s later.
    stopped: bool = False

    def online(self, now: datetime) -> bool:
        return not self.stopped and (now - self.last_seen).total_seconds() < ONLINE_WINDOW_S

    def wire(self, now: datetime) -> dict[str, Any]:
        """The entry of `GET /api/workers` (CONTRACT §7)."""
        return {
            "hostname": self.hostname,
            "queues": list(self.queues),
            "labels": dict(self.labels),
            "online": self.online(now),
            "lastSeen": _rfc3339(self.last_seen),
            "running": self.running,
            "concurrency": self.concurrency,
            "version": self.version,
        }


class HostRegistry:
    """Writes and reads of the registry under `keys`; a client is passed to each call (the
    worker's sync one, the relay's asyncio one)."""

    def __init__(self, keys: Keys) -> None:
        self.keys = keys

    def write(self, client: redis.Redis, entry: HostEntry) -> None:
        """Store `entry` and renew its `KEEP_S`; drop hostnames not seen for `KEEP_S`."""
        seen_ms = entry.last_seen.timestamp() * 1000
        pipe = client.pipeline(transaction=True)
        pipe.set(self.keys.host(entry.hostname), entry.model_dump_json(by_alias=True), ex=KEEP_S)
        pipe.zadd(self.keys.hosts(), {entry.hostname: seen_ms})
        pipe.zremrangebyscore(self.keys.hosts(), "-inf", f"({seen_ms - KEEP_S * 1000}")
        pipe.expire(self.keys.hosts(), KEEP_S)
        pipe.execute()

    def read(self, client: redis.Redis, now: datetime | None = None) -> list[dict[str, Any]]:
        """Every host seen within `KEEP_S`, sorted by hostname, in the wire form."""
        now = now or datetime.now(UTC)
        names = client.zrangebyscore(self.keys.hosts(), self._oldest_ms(now), "+inf")
        values = client.mget([self.keys.host(_text(n)) for n in names]) if names else []
        return listing(values, now)

    async def aread(
        self, client: aioredis.Redis, now: datetime | None = None
    ) -> list[dict[str, Any]]:
        """`read` on an asyncio client."""
        now = now or datetime.now(UTC)
        names = await client.zrangebyscore(self.keys.hosts(), self._oldest_ms(now), "+inf")
        values = await client.mget([self.keys.host(_text(n)) for n in names]) if names else []
        return listing(values, now)

    @staticmethod
    def _oldest_ms(now: datetime) -> float:
        return (now - timedelta(seconds=KEEP_S)).timestamp() * 1000


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def listing(values: Iterable[bytes | str | None], now: datetime) -> list[dict[str, Any]]:
    """The wire list from the stored entries: expired (None) and unreadable ones left out (a
    worker of another version may write what this one cannot read), sorted by hostname."""
    entries: list[HostEntry] = []
    for value in values:
        if value is None:
            continue
        try:
            entry = HostEntry.model_validate(orjson.loads(value))
        except (orjson.JSONDecodeError, ValidationError):
            continue
        if (now - entry.last_seen).total_seconds() <= KEEP_S:
            entries.append(entry)
    return [e.wire(now) for e in sorted(entries, key=lambda e: e.hostname)]


def entry_for(
    hostname: str,
    *,
    queues: Iterable[str],
    labels: Mapping[str, str],
    concurrency: int,
    running: int,
    stopped: bool = False,
) -> HostEntry:
    """This host's entry as of now, with this installation's version."""
    return HostEntry(
        hostname=hostname,
        queues=tuple(queues),
        labels=dict(labels),
        concurrency=concurrency,
        running=running,
        version=package_version(),
        last_seen=datetime.now(UTC),
        stopped=stopped,
    )
