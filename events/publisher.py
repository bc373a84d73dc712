"""Publish events: one Redis round trip per batch assigns each event its sequence id, appends it
to the execution's history stream, publishes it on the execution's channel and on the
all-executions channel, and updates the execution's record.

`Publisher.publish()` never blocks and never raises: events wait in a bounded buffer that a
background thread drains in order, retrying while Redis is unreachable. Past the buffer's bound,
output chunks are dropped and counted, and the next chunk of that execution carries
`droppedBytes`; control events (started, step, cancelled, complete) are always kept.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from events.keys import Keys
from events.models import ExecutionOutputPayload, WireModel, encode_parts, event_name
from events.settings import Settings

log = logging.getLogger(__name__)

# Redis executes the script atomically, so ids are contiguous whatever host publishes.
# Returns the event's id, or: -1 execution already complete (dropped), -2 output past the cap
# (dropped), -3 a retried batch that already went through (dropped as duplicate).
PUBLISH_LUA = """
if redis.call('HEXISTS', KEYS[3], 'completeId') == 1 then return -1 end
local n = tonumber(ARGV[12])
if n > 0 then
  local last = tonumber(redis.call('HGET', KEYS[3], ARGV[11]) or '0')
  if n <= last then return -3 end
  redis.call('HSET', KEYS[3], ARGV[11], n)
end
local head, tail = ARGV[1], ARGV[2]
local nbytes = tonumber(ARGV[7])
if nbytes > 0 then
  local used = redis.call('HINCRBY', KEYS[3], 'outputBytes', nbytes)
  if used > tonumber(ARGV[8]) then
    if redis.call('HSETNX', KEYS[3], 'outputTruncated', '1') == 0 then return -2 end
    -- The chunk that hits the cap says so: ARGV[3] goes at the end of its payload object
    -- (the tail ends with the payload's and the envelope's closing braces).
    tail = string.sub(tail, 1, -3) .. ARGV[3] .. '}}'
  end
end
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[10])
if cur < floor then redis.call('SET', KEYS[1], floor) end
local seq = redis.call('INCR', KEYS[1])
local env = head .. seq .. tail
redis.call('XADD', KEYS[2], seq .. '-0', 'e', env)
redis.call('PUBLISH', ARGV[4], env)
redis.call('PUBLISH', ARGV[5], env)
if #ARGV > 12 then redis.call('HSET', KEYS[3], unpack(ARGV, 13)) end
if ARGV[9] == '1' then redis.call('HSET', KEYS[3], 'completeId', seq) end
local ttl = tonumber(ARGV[6])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[3], ttl)
redis.call('INCR', KEYS[4])
return seq
"""

DROPPED_COMPLETE = -1
DROPPED_TRUNCATED = -2
DROPPED_DUPLICATE = -3

# Added to the payload of the output chunk that hits the cap, in Redis. Sending a second,
# marked copy of every chunk instead cost a second JSON encoding in Python and a second
# 64 KiB argument for Redis to copy into Lua: a third of the bus's throughput.
_TRUNCATED_FIELD = ',"truncated":true'

# Reads what the direct path needs to decide like PUBLISH_LUA does: per execution (KEYS[i]
# the seq counter, KEYS[n+i] the record) the last id, whether it completed, output bytes used,
# whether it was truncated, and this publisher's last batch number (ARGV[1] is its field).
STATE_LUA = """
local out = {}
local n = #KEYS / 2
for i = 1, n do
  local r = redis.call('HMGET', KEYS[n + i], 'completeId', 'outputBytes', 'outputTruncated',
    ARGV[1])
  out[#out + 1] = redis.call('GET', KEYS[i]) or '0'
  out[#out + 1] = r[1] and '1' or '0'
  out[#out + 1] = r[2] or '0'
  out[#out + 1] = r[3] and '1' or '0'
  out[#out + 1] = r[4] or '0'
end
return out
"""

# A batch carrying at least this much output goes the direct way (module docstring of
# `_send_direct`): Redis hashes every byte of a string handed to Lua, ~2 us per KiB, twice
# (argument and envelope), which cost more than the bus's whole Redis budget for output.
DIRECT_MIN_BYTES = 32 * 1024
# WATCH conflicts a direct batch tolerates before it goes the script's way instead.
_DIRECT_TRIES = 4

# One pipeline carries at most this much, so a slow Redis sees bounded requests.
_MAX_BATCH_BYTES = 4 * 1024 * 1024
_MAX_BATCH_EVENTS = 512


@dataclass
class _Item:
    execution_id: str
    event: str
    head: str
    tail: str
    truncated_field: str
    out_bytes: int
    complete: bool
    record: list[str]
    local_n: int
    done: threading.Event | None = None
    result: list[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.head) + len(self.tail)


_BIG_ARG = 16 * 1024


class _Envelope:
    """An event's XADD and two PUBLISHes, packed at once: the 64 KiB envelope tail is never
    copied (hiredis' packer copies each argument, ~24 us per 64 KiB) and never re-encoded."""

    __slots__ = ("channels", "entry_id", "head", "history", "tail")
    COMMANDS = 3  # what pack() writes: one XADD, one PUBLISH per channel

    def __init__(
        self, history: str, seq: int, channels: tuple[str, str], head: str, tail: str
    ) -> None:
        self.history = history.encode()
        self.entry_id = b"%d-0" % seq
        self.channels = tuple(c.encode() for c in channels)
        self.head = head.encode() + b"%d" % seq
        self.tail = tail.encode()

    def pack(self, pieces: list[bytes], buf: bytearray) -> bytearray:
        size = len(self.head) + len(self.tail)
        h, i = self.history, self.entry_id
        buf += b"*5\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n$1\r\ne\r\n$%d\r\n" % (
            len(h),
            h,
            len(i),
            i,
            size,
        )
        for ch in self.channels:
            buf += self.head
            pieces += (bytes(buf), self.tail)
            buf = bytearray(
                b"\r\n*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n" % (len(ch), ch, size)
            )
        buf += self.head
        pieces += (bytes(buf), self.tail)
        return bytearray(b"\r\n")


def pack_resp(commands: list[tuple[Any, ...] | _Envelope]) -> list[bytes]:
    """Commands in RESP, as pieces to send one after the other; an argument of 16 KiB or more
    is its own piece, never copied."""
    pieces: list[bytes] = []
    buf = bytearray()
    for cmd in commands:
        if isinstance(cmd, _Envelope):
            buf = cmd.pack(pieces, buf)
            continue
        buf += b"*%d\r\n" % len(cmd)
        for arg in cmd:
            b = arg if isinstance(arg, bytes) else str(arg).encode()
            buf += b"$%d\r\n" % len(b)
            if len(b) >= _BIG_ARG:
                pieces.append(bytes(buf))
                pieces.append(b)
                buf = bytearray(b"\r\n")
            else:
                buf += b
                buf += b"\r\n"
    if buf:
        pieces.append(bytes(buf))
    return pieces


_IOV_MAX = 1024


def _reply(conn: Any) -> Any:
    """One reply; an error reply is returned, not raised, so the rest can still be read."""
    try:
        return conn.read_response()
    except redis.ResponseError as e:
        return e


def _raise_first_error(replies: Sequence[Any]) -> None:
    for r in replies:
        if isinstance(r, Exception):
            raise r


def _send_all(conn: Any, pieces: list[bytes]) -> None:
    """Send the pieces with as few syscalls as the kernel allows (sendmsg gathers them); a TLS
    socket, which has no sendmsg, sends them one by one."""
    sock = getattr(conn, "_sock", None)  # redis-py's, private: anything else takes its path
    if type(sock) is not socket.socket:
        conn.send_packed_command(pieces)  # also (re)connects
        return
    views = [memoryview(p) for p in pieces if p]
    i = 0
    try:
        while i < len(views):
            sent = sock.sendmsg(views[i : i + _IOV_MAX])
            while sent and i < len(views):
                if sent >= len(views[i]):
                    sent -= len(views[i])
                    i += 1
                else:
                    views[i] = views[i][sent:]
                    sent = 0
    except OSError as e:
        conn.disconnect()
        raise redis.ConnectionError(f"Error while writing to socket: {e}") from e


@dataclass
class _ExecState:
    """One execution's publish state while a direct batch is decided, and as it was read (the
    record fields are written back only if they changed)."""

    seq: int
    complete: bool
    used: int
    truncated: bool
    pub: int
    used_before: int
    truncated_before: bool
    pub_before: int
    published: int = 0

    @classmethod
    def read(cls, values: Sequence[Any]) -> _ExecState:
        """From STATE_LUA's five values for one execution."""
        seq, complete, used, truncated, pub = (int(v) for v in values)
        return cls(seq, bool(complete), used, bool(truncated), pub, used, bool(truncated), pub)


def make_redis(url: str, **kwargs: object) -> redis.Redis:
    """A client for our keys. No socket timeout on reads would hang forever on a dead peer;
    5 s is redis-py 8's default and shorter than any blocking read we issue."""
    opts: dict[str, object] = {
        "socket_connect_timeout": 2.0,
        "socket_timeout": 5.0,
        "health_check_interval": 10,
    }
    opts.update(kwargs)
    return redis.Redis.from_url(url, **opts)


class Publisher:
    """Publishes events of any number of executions, in the order `publish()` was called."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        settings: Settings,
        *,
        on_result: Callable[[str, str, int], None] | None = None,
    ) -> None:
        self._redis = client
        self._keys = keys
        self._settings = settings
        self._script = client.register_script(PUBLISH_LUA)
        self._state_script = client.register_script(STATE_LUA)
        self.direct_min_bytes = DIRECT_MIN_BYTES
        self._pub_field = "pub:" + uuid.uuid4().hex[:16]
        self._on_result = on_result
        self._cond = threading.Condition()
        self._queue: deque[_Item] = deque()
        self._queued_bytes = 0
        self._inflight = 0
        self._local_n = 0
        self._last_seq: dict[str, int] = {}
        self._truncated: set[str] = set()
        self._completed: set[str] = set()
        self._dropped: dict[str, int] = {}
        self._closed = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._conn: Any = None  # the sender thread's own connection (see _connection)
        self._conn_pid = 0
        self.connected = True

    # -- producer side -------------------------------------------------------------------
    def publish(
        self,
        payload: WireModel,
        *,
        record: Mapping[str, str | int] | None = None,
        wait: bool = False,
    ) -> int | None:
        """Queue one event. With wait=True, block until Redis took it and return its id."""
        execution_id: str = payload.execution_id  # type: ignore[attr-defined]
        name = event_name(payload)
        is_output = isinstance(payload, ExecutionOutputPayload)
        with self._cond:
            if isinstance(payload, ExecutionOutputPayload):
                if execution_id in self._truncated or execution_id in self._completed:
                    return None
                if self._would_overflow(len(payload.output)):
                    self._dropped[execution_id] = self._dropped.get(execution_id, 0) + len(
                        payload.output.encode()
                    )
                    return None
            if is_output and execution_id in self._dropped:
                payload = payload.model_copy(
                    update={"dropped_bytes": self._dropped.pop(execution_id)}
                )
        head, tail = encode_parts(name, execution_id, payload)
        pairs: list[str] = []
        for k, v in (record or {}).items():
            pairs += [k, str(v)]
        item = _Item(
            execution_id=execution_id,
            event=name,
            head=head,
            tail=tail,
            truncated_field=_TRUNCATED_FIELD if is_output else "",
            out_bytes=len(head) + len(tail) if is_output else 0,
            complete=name == "execution_complete",
            record=pairs,
            local_n=0,
            done=threading.Event() if wait else None,
        )
        with self._cond:
            self._local_n += 1
            item.local_n = self._local_n
            self._queue.append(item)
            self._queued_bytes += item.size
            if item.complete:
                self._completed.add(execution_id)
            self._ensure_thread()
            self._cond.notify_all()
        if item.done is not None:
            item.done.wait()
            return item.result[0] if item.result and item.result[0] > 0 else None
        return None

    def _would_overflow(self, nbytes: int) -> bool:
        return self._queued_bytes + nbytes > self._settings.publish_buffer_bytes

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued event reached Redis; False if the timeout came first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self._queue or self._inflight:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._inflight

    def forget(self, execution_id: str) -> None:
        """Drop per-execution bookkeeping once an execution is done in this process."""
        with self._cond:
            self._last_seq.pop(execution_id, None)
            self._truncated.discard(execution_id)
            self._completed.discard(execution_id)
            self._dropped.pop(execution_id, None)

    def close(self, timeout_s: float | None = 10.0) -> None:
        self.flush(timeout_s)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            if not self._thread.is_alive() and self._conn is not None:
                self._conn.disconnect()
                self._conn = None

    # -- sender thread ---------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        # After a fork (prefork pool) the parent's thread does not exist in the child.
        if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._run, name="cloudops-publisher", daemon=True
            )
            self._thread.start()

    def _take_batch(self) -> list[_Item]:
        batch: list[_Item] = []
        size = 0
        while self._queue and len(batch) < _MAX_BATCH_EVENTS and size < _MAX_BATCH_BYTES:
            item = self._queue.popleft()
            batch.append(item)
            size += item.size
        self._queued_bytes -= size
        self._inflight = len(batch)
        return batch

    def _run(self) -> None:
        backoff_s = 0.05
        batch: list[_Item] = []
        while True:
            with self._cond:
                if not batch:
                    while not self._queue and not self._closed:
                        self._cond.wait()
                    if not self._queue and self._closed:
                        return
                    batch = self._take_batch()
            try:
                results = self._send(batch)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
                if self.connected:
                    log.warning("Redis unreachable, buffering events: %s", e)
                self.connected = False
                time.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 1.0)
                continue
            except redis.RedisError:
                # A script error is a bug of ours, not a Redis outage: report it once and drop
                # the batch so that one bad event cannot wedge every execution of this process.
                log.exception("publish failed; dropping %d events", len(batch))
                results = [DROPPED_COMPLETE] * len(batch)
            if not self.connected:
                log.warning("Redis reachable again, buffered events sent")
            self.connected = True
            backoff_s = 0.05
            self._finish(batch, results)
            batch = []

    def _send(self, batch: list[_Item]) -> list[int]:
        try:
            return self._send_once(batch)
        except redis.exceptions.NoScriptError:
            # Redis lost its script cache (restarted, SCRIPT FLUSH). Events of the batch that
            # ran before that are recognised by their local number and not published twice.
            self._redis.script_load(PUBLISH_LUA)
            self._redis.script_load(STATE_LUA)
            return self._send_once(batch)

    def _send_once(self, batch: list[_Item]) -> list[int]:
        if sum(it.out_bytes for it in batch) >= self.direct_min_bytes:
            return self._send_direct(batch)
        return self._send_scripted(batch)

    def _connection(self) -> Any:
        """The sender thread's own connection, kept for the publisher's life: redis-py's pool
        and pipeline machinery (observability hooks, retry wrappers) cost ~100 us per batch,
        as much as a small batch's whole Redis round trip. A forked child makes its own."""
        if self._conn is None or self._conn_pid != os.getpid():
            # Scripts loaded up front: the first batch need not learn of them through NOSCRIPT
            # (after which fakeredis' TCP server, the embedded relay's, drops the connection).
            self._redis.script_load(PUBLISH_LUA)
            self._redis.script_load(STATE_LUA)
            self._conn = self._redis.connection_pool.make_connection()
            self._conn_pid = os.getpid()
        return self._conn

    def _send_scripted(self, batch: list[_Item]) -> list[int]:
        keys = self._keys
        sha = self._script.sha
        cmds: list[tuple[Any, ...] | _Envelope] = []
        for it in batch:
            ex = it.execution_id
            cmds.append(
                (
                    "EVALSHA",
                    sha,
                    4,
                    keys.seq(ex),
                    keys.history(ex),
                    keys.record(ex),
                    keys.stat("events"),
                    it.head,
                    it.tail,
                    it.truncated_field,
                    keys.channel(ex),
                    keys.channel_all(),
                    self._settings.history_ttl_s,
                    it.out_bytes,
                    self._settings.max_output_bytes,
                    "1" if it.complete else "0",
                    self._last_seq.get(ex, 0),
                    self._pub_field,
                    it.local_n,
                    *it.record,
                )
            )
        conn = self._connection()
        try:
            _send_all(conn, pack_resp(cmds))
            replies = [_reply(conn) for _ in cmds]
        except BaseException:
            conn.disconnect()  # a half-read batch leaves replies on the socket
            raise
        _raise_first_error(replies)
        return [int(r) for r in replies]

    def _send_direct(self, batch: list[_Item]) -> list[int]:
        """The batch as one MULTI/EXEC of plain XADD and PUBLISH commands, envelopes built here.

        Same decisions as PUBLISH_LUA, taken here on the state read under WATCH of the
        executions' seq counters: every id PUBLISH_LUA hands out INCRs one of them, so EXEC
        fails (and the batch is decided again) whenever another publisher got in between. Ids
        stay contiguous and ordered whoever publishes, and a batch lands whole or not at all.
        Raw commands on one connection: redis-py's transaction pipeline parses each QUEUED
        reply through its whole response machinery, which cost more than the Lua it replaces.
        """
        keys = self._keys
        execs = list(dict.fromkeys(it.execution_id for it in batch))
        seq_keys = [keys.seq(ex) for ex in execs]
        state_cmd = (
            "EVALSHA",
            self._state_script.sha,
            2 * len(execs),
            *seq_keys,
            *(keys.record(ex) for ex in execs),
            self._pub_field,
        )
        conn = self._connection()
        try:
            for _ in range(_DIRECT_TRIES):
                _send_all(conn, pack_resp([("WATCH", *seq_keys), state_cmd]))
                conn.read_response()
                raw: Any = conn.read_response()
                results, cmds = self._direct_commands(batch, execs, raw)
                _send_all(conn, pack_resp([("MULTI",), *cmds, ("EXEC",)]))
                queued = sum(c.COMMANDS if isinstance(c, _Envelope) else 1 for c in cmds)
                for _ in range(queued + 1):
                    conn.read_response()  # OK, then QUEUED per command
                reply: Any = conn.read_response()
                if reply is None:
                    continue  # another publisher got in between: decide again
                _raise_first_error(reply)
                return results
        except BaseException:
            # The connection may hold a WATCH or half a transaction: start a new one.
            conn.disconnect()
            raise
        # Other publishers of these executions kept getting in first: the script path cannot
        # be overtaken (it is one atomic step per event), so nobody starves.
        return self._send_scripted(batch)

    def _direct_commands(
        self, batch: list[_Item], execs: list[str], raw: Any
    ) -> tuple[list[int], list[tuple[Any, ...] | _Envelope]]:
        keys = self._keys
        state = {ex: _ExecState.read(raw[5 * i : 5 * i + 5]) for i, ex in enumerate(execs)}
        cap = self._settings.max_output_bytes
        results: list[int] = []
        cmds: list[tuple[Any, ...] | _Envelope] = []
        for it in batch:
            ex = it.execution_id
            st = state[ex]
            if st.complete:
                results.append(DROPPED_COMPLETE)
                continue
            if it.local_n > 0:
                if it.local_n <= st.pub:
                    results.append(DROPPED_DUPLICATE)
                    continue
                st.pub = it.local_n
            tail = it.tail
            if it.out_bytes > 0:
                st.used += it.out_bytes
                if st.used > cap:
                    if st.truncated:
                        results.append(DROPPED_TRUNCATED)
                        continue
                    st.truncated = True
                    tail = tail[:-2] + it.truncated_field + "}}"
            st.seq = max(st.seq, self._last_seq.get(ex, 0)) + 1
            st.published += 1
            channels = (keys.channel(ex), keys.channel_all())
            cmds.append(_Envelope(keys.history(ex), st.seq, channels, it.head, tail))
            if it.record:
                cmds.append(("HSET", keys.record(ex), *it.record))
            if it.complete:
                st.complete = True
                cmds.append(("HSET", keys.record(ex), "completeId", st.seq))
            results.append(st.seq)
        ttl = self._settings.history_ttl_s
        published = 0
        for ex, st in state.items():
            fields: list[Any] = []
            if st.used != st.used_before:
                fields += ["outputBytes", st.used]
            if st.truncated and not st.truncated_before:
                fields += ["outputTruncated", 1]
            if st.pub != st.pub_before:
                fields += [self._pub_field, st.pub]
            if fields:
                cmds.append(("HSET", keys.record(ex), *fields))
            if st.published:
                published += st.published
                cmds.append(("SET", keys.seq(ex), st.seq))
                for key in (keys.seq(ex), keys.history(ex), keys.record(ex)):
                    cmds.append(("EXPIRE", key, ttl))
        if published:
            cmds.append(("INCRBY", keys.stat("events"), published))
        return results, cmds

    def _finish(self, batch: list[_Item], results: list[int]) -> None:
        with self._cond:
            for it, seq in zip(batch, results, strict=True):
                if seq > 0:
                    self._last_seq[it.execution_id] = seq
                elif seq == DROPPED_TRUNCATED:
                    self._truncated.add(it.execution_id)
                it.result.append(seq)
                if it.done is not None:
                    it.done.set()
            self._inflight = 0
            self._cond.notify_all()
        if self._on_result is not None:
            for it, seq in zip(batch, results, strict=True):
                self._on_result(it.execution_id, it.event, seq)
