"""The publisher's two ways of sending a batch to Redis, both deciding by the same rules.

- The script path: one EVALSHA of `publish.lua` per event, pipelined (one round trip). Atomic
  per event, so any number of publishers of one execution interleave without conflict.
- The direct path, for batches carrying big output: Redis copies and hashes every byte of a
  string handed to Lua (measured: EVALSHA with one 64 KiB argument cost ~127 us of Redis CPU
  where SET of the same cost ~14 us), which cost more than the bus's whole Redis budget. So the
  batch is planned by `plan.lua` (the same rules, no payload) right after WATCHing the
  executions' seq counters, and sent as one MULTI/EXEC of plain XADD and PUBLISH commands plus
  the writes the plan returned. A publisher that got in between changed a counter: EXEC fails
  and the batch is planned again; after `_DIRECT_TRIES` conflicts it goes the script's way,
  which cannot be overtaken, so nobody starves.

Both run on one connection of the sender thread's own, built from the client's pool settings
with redis-py's Python packer (`command_packer`): it hands arguments over 6,000 bytes to the
socket as they are, where hiredis' packer copies each 64 KiB argument (~24 us).

With `redis_min_replicas` (CLOUDOPS_REDIS_MIN_REPLICAS) a batch is confirmed only once that
many replicas hold it: a WAIT follows it in the same round trip, and is asked again until it is
met. A batch not confirmed when the master dies is sent again, whole, to the master the
sentinels promote; the rules drop what of it the new master holds already (the publisher's
batch number), so nothing is published twice and ids go on from where the replica stood.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.connection import PythonRespSerializer

from events.keys import Keys
from events.scripts import script
from events.settings import Settings
from events.wire import TRUNCATED_FIELD, Encoded, Parts

# What a script answers for an event it did not publish (events/lua/rules.lua).
DROPPED_COMPLETE = -1
DROPPED_TRUNCATED = -2
DROPPED_DUPLICATE = -3

# A batch carrying at least this much output goes the direct way (module docstring).
DIRECT_MIN_BYTES = 32 * 1024
# WATCH conflicts a direct batch tolerates before it goes the script's way instead.
_DIRECT_TRIES = 4
# redis-py's own default: arguments longer than this are sent as they are, never copied.
_BUFFER_CUTOFF = 6000
# One WAIT blocks at most this long: less than the connection's 5 s read timeout.
_MAX_WAIT_MS = 4000
# How often a sender asks Redis whether anyone listens to the all-executions channel: output
# goes there only while someone does (see `BatchSender._all_output`).
ALL_CHECK_S = 0.5

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Item:
    """One event waiting to be published."""

    execution_id: str
    event: str
    encoded: Encoded
    # UTF-8 bytes of the envelope, counted against the output cap; 0 for anything but output.
    out_bytes: int
    complete: bool
    record: list[str]  # the record fields the event changes, as field/value pairs
    local_n: int = 0  # the publisher's batch number, for the retried-batch dedupe
    done: threading.Event | None = None
    result: int = 0

    @property
    def size(self) -> int:
        return len(self.encoded)


class _Script:
    __slots__ = ("sha", "text")

    def __init__(self, name: str) -> None:
        self.text = script(name)
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()


def _encode(value: object) -> bytes | memoryview:
    """An argument as the bytes Redis gets (the packer's `encode`): ours are bytes, text or
    integers."""
    if isinstance(value, bytes | memoryview):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value).encode()
    raise TypeError(f"cannot send {type(value).__name__} to Redis")


class _Envelope:
    """An envelope in parts (`Encoded.parts`): one bulk argument to Redis, never joined."""

    __slots__ = ("nbytes", "parts")

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self.nbytes = sum(len(p) for p in parts)


class _Packer(PythonRespSerializer):
    """redis-py's Python packer (its `command_packer` extension point), plus one argument
    type: `_Envelope`, framed as one bulk string whose parts go to the socket as they are. The
    same payload body then goes to XADD and PUBLISH without a joined copy for each; redis-py's
    `pack_commands` still merges the small pieces around it into one buffer."""

    def pack(self, *args: Any) -> list[bytes | memoryview]:
        if not any(isinstance(a, _Envelope) for a in args):
            return super().pack(*args)  # type: ignore[no-any-return,no-untyped-call]
        out: list[bytes | memoryview] = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, _Envelope):
                out += (b"$%d\r\n" % a.nbytes, *a.parts, b"\r\n")
            else:
                b = _encode(a)
                out += (b"$%d\r\n" % len(b), b, b"\r\n")
        return out


def _reply(conn: Any) -> Any:
    """One reply; an error reply is returned, not raised, so the rest can still be read."""
    try:
        return conn.read_response()
    except redis.ResponseError as e:
        return e


def _to_all(it: Item, all_output: bool) -> bool:
    """Whether `it` goes to the all-executions channel: control events always, output only
    while someone listens there (BatchSender._all_output)."""
    return all_output or not it.out_bytes


def _raise_first_error(replies: Sequence[Any]) -> None:
    for r in replies:
        if isinstance(r, Exception):
            raise r


@dataclass
class BatchSender:
    """Sends batches for one publisher; only its sender thread calls it."""

    client: redis.Redis
    keys: Keys
    settings: Settings
    pub_field: str
    floor: Callable[[str], int]  # the publisher's last id of an execution
    # Called between the plan and its EXEC (tests make another publisher get in there).
    before_exec: Callable[[], None] | None = None
    _publish: _Script = field(default_factory=lambda: _Script("publish"))
    _plan: _Script = field(default_factory=lambda: _Script("plan"))
    _conn: Any = None
    _conn_pid: int = 0
    _all_listened: bool = True
    _all_checked_at: float = float("-inf")

    def send(self, batch: list[Item], *, direct: bool) -> list[int]:
        try:
            return self._send(batch, direct)
        except redis.exceptions.NoScriptError:
            # Redis lost its script cache (restarted, SCRIPT FLUSH). Events of the batch that
            # went through before that are recognised by their batch number, not sent twice.
            self._load_scripts(self._connection())
            return self._send(batch, direct)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()
            self._conn = None

    def _send(self, batch: list[Item], direct: bool) -> list[int]:
        return self._send_direct(batch) if direct else self._send_scripted(batch)

    def _all_output(self, conn: Any) -> bool:
        """Whether output chunks also go to the all-executions channel: only while someone
        subscribes to it. Nobody listening, a copy of every chunk there was a third of the
        bytes the bus sends to Redis (issue 19). Control events always go: a new listener sees
        every execution's next event at once, and its output from at most 2 x ALL_CHECK_S
        later; the relay's all-executions feed fills what it missed of an execution it knows
        from that execution's history (api/feed.py, AllFeed).

        The question (PUBSUB NUMSUB) rides along in the round trips the batches make anyway
        (`_all_query`), at most every ALL_CHECK_S; it costs a round trip of its own only when
        the answer is older than twice that (after a quiet spell). Asked on its own before
        every batch, it was an extra round trip for one sparse line in ten (issue 19)."""
        if time.monotonic() - self._all_checked_at >= 2 * ALL_CHECK_S:
            (reply,) = self._roundtrip(conn, [self._numsub()])
            self._take_all(reply)
        return self._all_listened

    def _numsub(self) -> tuple[Any, ...]:
        return ("PUBSUB", "NUMSUB", self.keys.channel_all())

    def _all_query(self) -> list[tuple[Any, ...]]:
        """The NUMSUB to add to a batch's round trip, when a check is due."""
        if time.monotonic() - self._all_checked_at < ALL_CHECK_S:
            return []
        return [self._numsub()]

    def _take_all(self, reply: Any) -> None:
        _raise_first_error([reply])
        self._all_listened = int(reply[1]) > 0
        self._all_checked_at = time.monotonic()

    # -- replicas ---------------------------------------------------------------------------
    def _wait_commands(self) -> list[tuple[Any, ...]]:
        """The WAIT that follows a batch in its round trip, if replicas must confirm it."""
        need = self.settings.redis_min_replicas
        if need <= 0:
            return []
        return [("WAIT", need, min(self.settings.redis_replica_wait_ms, _MAX_WAIT_MS))]

    def _confirm(self, conn: Any, acked: Any) -> None:
        """Return once `redis_min_replicas` replicas hold everything this connection wrote
        (`acked`: what the batch's own WAIT answered). Until then the batch is not confirmed:
        a broken connection here sends it again (see the module docstring)."""
        if isinstance(acked, Exception):
            raise acked
        wait = self._wait_commands()
        if int(acked) >= wait[0][1]:
            return
        log.warning("waiting for a Redis replica to confirm published events")
        while int(acked) < wait[0][1]:
            (acked,) = self._roundtrip(conn, wait)
            if isinstance(acked, Exception):
                raise acked
        log.warning("a Redis replica confirmed the published events again")

    # -- the connection ---------------------------------------------------------------------
    def _connection(self) -> Any:
        """The sender's own connection, kept for the publisher's life: redis-py's pool and
        pipeline machinery (observability hooks, retry wrappers) cost ~100 us per batch, as
        much as a small batch's whole round trip. A forked child makes its own."""
        if self._conn is None or self._conn_pid != os.getpid():
            pool = self.client.connection_pool
            packer = _Packer(_BUFFER_CUTOFF, _encode)
            self._conn = pool.connection_class(**pool.connection_kwargs, command_packer=packer)
            self._conn_pid = os.getpid()
            self._load_scripts(self._conn)
        return self._conn

    def _load_scripts(self, conn: Any) -> None:
        conn.connect()  # see _roundtrip
        for s in (self._publish, self._plan):
            conn.send_command("SCRIPT", "LOAD", s.text)
            conn.read_response()

    def _roundtrip(self, conn: Any, commands: list[tuple[Any, ...]]) -> list[Any]:
        try:
            # connect() first: send_packed_command connects by itself, but straight to the
            # connection's host, so a Sentinel-managed one would skip asking the sentinels
            # for the master (redis-py 8.1) and reach its default, localhost:6379.
            conn.connect()
            conn.send_packed_command(conn.pack_commands(commands))
            return [_reply(conn) for _ in commands]
        except BaseException:
            conn.disconnect()  # a half-read batch leaves replies on the socket
            raise

    # -- the script path -------------------------------------------------------------------
    def _send_scripted(self, batch: list[Item]) -> list[int]:
        keys, s = self.keys, self.settings
        conn = self._connection()
        all_output = self._all_output(conn)
        commands: list[tuple[Any, ...]] = []
        for it in batch:
            ex = it.execution_id
            commands.append(
                (
                    "EVALSHA",
                    self._publish.sha,
                    4,
                    keys.seq(ex),
                    keys.history(ex),
                    keys.record(ex),
                    keys.stat("events"),
                    it.encoded.head,
                    it.encoded.tail(),
                    TRUNCATED_FIELD,
                    keys.channel(ex),
                    keys.channel_all() if _to_all(it, all_output) else "",
                    s.history_ttl_s,
                    it.out_bytes,
                    s.max_output_bytes,
                    1 if it.complete else 0,
                    self.floor(ex),
                    self.pub_field,
                    it.local_n,
                    *it.record,
                )
            )
        wait, ask = self._wait_commands(), self._all_query()
        replies = self._roundtrip(conn, commands + wait + ask)
        if ask:
            self._take_all(replies.pop())  # for the next batches
        acked = replies.pop() if wait else None
        _raise_first_error(replies)
        if wait:
            self._confirm(conn, acked)
        return [int(r) for r in replies]

    # -- the direct path -------------------------------------------------------------------
    def _plan_command(self, batch: list[Item], execs: list[str]) -> tuple[Any, ...]:
        keys, s = self.keys, self.settings
        index = {ex: i + 1 for i, ex in enumerate(execs)}
        key_args: list[str] = []
        for ex in execs:
            key_args += [keys.seq(ex), keys.history(ex), keys.record(ex)]
        key_args.append(keys.stat("events"))
        args: list[Any] = [self.pub_field, s.max_output_bytes, s.history_ttl_s]
        for it in batch:
            ex = it.execution_id
            args += [index[ex], it.out_bytes, 1 if it.complete else 0, self.floor(ex)]
            args += [it.local_n, len(it.record) // 2, *it.record]
        return ("EVALSHA", self._plan.sha, len(key_args), *key_args, *args)

    def _send_direct(self, batch: list[Item]) -> list[int]:
        execs = list(dict.fromkeys(it.execution_id for it in batch))
        plan = self._plan_command(batch, execs)
        conn = self._connection()
        try:
            for _ in range(_DIRECT_TRIES):
                results = self._try_direct(conn, batch, execs, plan)
                if results is not None:
                    return results
        except BaseException:
            conn.disconnect()  # it may hold a WATCH or half a transaction: start a new one
            raise
        # Other publishers of these executions kept getting in first: the script path cannot
        # be overtaken (it is one atomic step per event), so nobody starves.
        return self._send_scripted(batch)

    def _try_direct(
        self, conn: Any, batch: list[Item], execs: list[str], plan: tuple[Any, ...]
    ) -> list[int] | None:
        """One WATCH, plan, MULTI/EXEC; None when another publisher got in between."""
        keys = self.keys
        ask = self._all_query()
        replies = self._roundtrip(conn, [("WATCH", *(keys.seq(e) for e in execs)), plan, *ask])
        if ask:
            self._take_all(replies.pop())
        watched, planned = replies
        _raise_first_error([watched, planned])
        all_output = self._all_listened
        ids, marks, writes = planned
        commands: list[tuple[Any, ...]] = [("MULTI",)]
        for it, seq, mark in zip(batch, ids, marks, strict=True):
            if seq > 0:
                env = _Envelope(it.encoded.parts(seq, truncated=bool(mark)))
                ex = it.execution_id
                commands.append(("XADD", keys.history(ex), b"%d-0" % seq, "e", env))
                commands.append(("PUBLISH", keys.channel(ex), env))
                if _to_all(it, all_output):
                    commands.append(("PUBLISH", keys.channel_all(), env))
        commands += [tuple(w) for w in writes]
        commands.append(("EXEC",))
        if self.before_exec is not None:
            self.before_exec()
        wait = self._wait_commands()
        replies = self._roundtrip(conn, commands + wait)
        acked = replies.pop() if wait else None
        exec_reply = replies[-1]
        if exec_reply is None:
            return None
        _raise_first_error([*replies[:-1], exec_reply])
        _raise_first_error(exec_reply)
        if wait:
            self._confirm(conn, acked)
        return [int(x) for x in ids]
