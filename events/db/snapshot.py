"""Reading executions out of Redis for the archiver: for each, the envelopes after the id the
database holds and the record hash, as one snapshot.

Each round is one MULTI of XRANGE + HGETALL per execution, so a record is always read
together with the end of its stream: when the record says complete, the stream is final
(nothing is published after execution_complete). Only reads; never writes a key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis

from events.keys import Keys

_MAX_PAGE = 10_000  # entries of one XRANGE


@dataclass
class Snapshot:
    """One execution as Redis held it: the events after `start`, its record hash."""

    start: int
    ids: list[int] = field(default_factory=list)
    envelopes: list[bytes] = field(default_factory=list)
    raw: dict[str, str] = field(default_factory=dict)
    caught_up: bool = False
    nbytes: int = 0

    @property
    def last(self) -> int:
        return self.ids[-1] if self.ids else self.start


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _as_is(response: Any, **_options: Any) -> Any:
    return response


class SnapshotReader:
    def __init__(self, redis_client: redis.Redis, keys: Keys) -> None:
        # The caller's connections, but XRANGE replies left as Redis sent them: redis-py's
        # parser builds a dict per entry, a third of the archiver's time on small events.
        self._raw = redis.Redis(connection_pool=redis_client.connection_pool)
        self._raw.set_response_callback("XRANGE", _as_is)
        self._keys = keys

    def read(
        self, start: dict[str, int], *, tx_bytes: int, page_events: int
    ) -> dict[str, Snapshot]:
        """Events after each start (execution id -> last id held) and each record, in
        rounds, until about `tx_bytes` of envelopes are read."""
        snaps = {ex: Snapshot(start=s) for ex, s in start.items()}
        pending = list(snaps)
        total = 0
        first = True
        while pending:
            counts = _counts(snaps, pending, tx_bytes - total, first, page_events)
            first = False
            # One MULTI: each record is read together with the end of its stream. (Redis
            # Cluster would need one MULTI per execution; its keys share a slot for that.)
            pipe = self._raw.pipeline(transaction=True)
            for ex in pending:
                after = snaps[ex].last
                pipe.xrange(self._keys.history(ex), min=f"{after + 1}-0", count=counts[ex])
                pipe.hgetall(self._keys.record(ex))
            replies = pipe.execute()
            more: list[str] = []
            for i, ex in enumerate(pending):
                snap = snaps[ex]
                entries: Any = replies[2 * i]
                snap.raw = {_s(k): _s(v) for k, v in replies[2 * i + 1].items()}
                if entries:
                    ids, envelopes = _entries(entries)
                    snap.ids += ids
                    snap.envelopes += envelopes
                    nbytes = sum(map(len, envelopes))
                    snap.nbytes += nbytes
                    total += nbytes
                if len(entries) < counts[ex]:
                    snap.caught_up = True
                else:
                    more.append(ex)
            if total >= tx_bytes:
                break
            pending = more
        return snaps


def _counts(
    snaps: dict[str, Snapshot],
    pending: list[str],
    budget_bytes: int,
    first: bool,
    page_events: int,
) -> dict[str, int]:
    """Entries to ask of each stream this round. The first round asks `page_events` in
    all (an envelope is at most ~130 KiB: 64 KiB of output, escaped), so a group of big
    histories stays bounded; later rounds split what is left of the transaction's byte
    budget by the envelope size each stream showed, so small events come in big pages."""
    if first:
        return dict.fromkeys(pending, max(8, page_events // len(pending)))
    share = max(1, budget_bytes) // len(pending)
    out = {}
    for ex in pending:
        snap = snaps[ex]
        avg = max(1, snap.nbytes // max(1, len(snap.ids)))
        out[ex] = min(_MAX_PAGE, max(8, share // avg))
    return out


def _entries(entries: list[Any]) -> tuple[list[int], list[bytes]]:
    """Ids and envelopes of a raw XRANGE reply: [[b"<seq>-0", [b"e", envelope]], ...]."""
    if isinstance(entries[0][0], bytes):
        # int() parses ASCII digits in bytes; list comprehensions, not a loop: every event.
        return [int(i.partition(b"-")[0]) for i, _ in entries], [f[1] for _, f in entries]
    # A client that decodes responses: the same bytes back (UTF-8 both ways).
    return [int(i.partition("-")[0]) for i, _ in entries], [f[1].encode() for _, f in entries]
