"""Publish events: each batch assigns its events their sequence ids, appends them to their
executions' history streams, publishes them on the executions' channels and on the
all-executions channel (output only while someone listens there: `BatchSender._all_output`),
and updates the records, in one atomic step per event or per batch
(events/batches.py; the rules are events/lua/rules.lua).

`Publisher.publish()` never blocks (unless asked to wait, with a timeout) and never raises for
Redis: events wait in a bounded buffer that a background thread drains in order, retrying while
Redis is unreachable. Past the buffer's bound, output chunks are dropped and counted, and the
next chunk of that execution carries `droppedBytes`; control events (started, step, cancelled,
complete) are always kept.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping

import redis

from events.batches import DIRECT_MIN_BYTES, DROPPED_COMPLETE, DROPPED_TRUNCATED, BatchSender, Item
from events.errors import PublishTimeoutError
from events.keys import Keys
from events.models import ExecutionOutputPayload, WireModel, event_name
from events.settings import Settings
from events.vocabulary import PUBLISHER_FIELD_PREFIX
from events.wire import encode_payload, utf8_len

log = logging.getLogger(__name__)

# One round trip carries at most this much, so a slow Redis sees bounded requests.
_MAX_BATCH_BYTES = 4 * 1024 * 1024
_MAX_BATCH_EVENTS = 512
# How long publish(wait=True) waits by default before it raises PublishTimeoutError.
WAIT_TIMEOUT_S = 30.0


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
        self._settings = settings
        self.direct_min_bytes = DIRECT_MIN_BYTES
        self.sender = BatchSender(
            client, keys, settings, PUBLISHER_FIELD_PREFIX + uuid.uuid4().hex[:16], self._floor
        )
        self._on_result = on_result
        self._cond = threading.Condition()
        self._queue: deque[Item] = deque()
        self._queued_bytes = 0
        self._inflight = 0
        # Events per execution queued or sent but not yet answered by Redis: `output_idle`.
        self._unconfirmed: dict[str, int] = {}
        self._local_n = 0
        self._last_seq: dict[str, int] = {}
        self._truncated: set[str] = set()
        self._completed: set[str] = set()
        self._dropped_bytes: dict[str, int] = {}
        self._closed = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self.connected = True

    # -- producer side -------------------------------------------------------------------
    def publish(
        self,
        payload: WireModel,
        *,
        record: Mapping[str, str | int] | None = None,
        wait: bool = False,
        timeout_s: float = WAIT_TIMEOUT_S,
    ) -> int | None:
        """Queue one event. With wait=True, block until Redis took it and return its id (None
        if the rules dropped it); raise PublishTimeoutError if that took over `timeout_s`."""
        execution_id: str = payload.execution_id  # type: ignore[attr-defined]
        is_output = isinstance(payload, ExecutionOutputPayload)
        if isinstance(payload, ExecutionOutputPayload):
            admitted = self._admit_output(execution_id, payload)
            if admitted is None:
                return None
            payload = admitted
        encoded = encode_payload(payload)
        pairs: list[str] = []
        for k, v in (record or {}).items():
            pairs += [k, str(v)]
        name = event_name(payload)
        item = Item(
            execution_id=execution_id,
            event=name,
            encoded=encoded,
            out_bytes=len(encoded) if is_output else 0,
            complete=name == "execution_complete",
            record=pairs,
            done=threading.Event() if wait else None,
        )
        with self._cond:
            self._local_n += 1
            item.local_n = self._local_n
            self._queue.append(item)
            self._queued_bytes += item.size
            self._unconfirmed[execution_id] = self._unconfirmed.get(execution_id, 0) + 1
            if item.complete:
                self._completed.add(execution_id)
            self._ensure_thread()
            self._cond.notify_all()
        if item.done is None:
            return None
        if not item.done.wait(timeout_s):
            raise PublishTimeoutError(execution_id, item.event, timeout_s)
        return item.result if item.result > 0 else None

    def _admit_output(
        self, execution_id: str, payload: ExecutionOutputPayload
    ) -> ExecutionOutputPayload | None:
        """The chunk to queue (carrying droppedBytes after a gap), or None to drop it."""
        with self._cond:
            if execution_id in self._truncated or execution_id in self._completed:
                return None
            nbytes = utf8_len(payload.output)
            if self._queued_bytes + nbytes > self._settings.publish_buffer_bytes:
                self._dropped_bytes[execution_id] = (
                    self._dropped_bytes.get(execution_id, 0) + nbytes
                )
                return None
            dropped = self._dropped_bytes.pop(execution_id, None)
        if dropped is None:
            return payload
        return payload.model_copy(update={"dropped_bytes": dropped})

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

    def output_idle(self, execution_id: str) -> bool:
        """True when none of the execution's events waits for Redis: its next output may go
        out at once (events/coalescer.py). Lock-free: one dict lookup, called at every read."""
        return execution_id not in self._unconfirmed

    def pending(self) -> int:
        with self._cond:
            return len(self._queue) + self._inflight

    def forget(self, execution_id: str) -> None:
        """Drop per-execution bookkeeping once an execution is done in this process."""
        with self._cond:
            self._last_seq.pop(execution_id, None)
            self._truncated.discard(execution_id)
            self._completed.discard(execution_id)
            self._dropped_bytes.pop(execution_id, None)
            self._unconfirmed.pop(execution_id, None)

    def close(self, timeout_s: float | None = 10.0) -> None:
        self.flush(timeout_s)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            if not self._thread.is_alive():
                self.sender.close()

    # -- sender thread ---------------------------------------------------------------------
    def _floor(self, execution_id: str) -> int:
        return self._last_seq.get(execution_id, 0)

    def _ensure_thread(self) -> None:
        # After a fork (prefork pool) the parent's thread does not exist in the child.
        if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._run, name="cloudops-publisher", daemon=True
            )
            self._thread.start()

    def _take_batch(self) -> list[Item]:
        batch: list[Item] = []
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
        batch: list[Item] = []
        while True:
            with self._cond:
                if not batch:
                    while not self._queue and not self._closed:
                        self._cond.wait()
                    if not self._queue and self._closed:
                        return
                    batch = self._take_batch()
            direct = sum(it.out_bytes for it in batch) >= self.direct_min_bytes
            try:
                results = self.sender.send(batch, direct=direct)
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

    def _finish(self, batch: list[Item], results: list[int]) -> None:
        with self._cond:
            for it, seq in zip(batch, results, strict=True):
                if seq > 0:
                    self._last_seq[it.execution_id] = seq
                elif seq == DROPPED_TRUNCATED:
                    self._truncated.add(it.execution_id)
                it.result = seq
                left = self._unconfirmed.get(it.execution_id, 0) - 1
                if left > 0:
                    self._unconfirmed[it.execution_id] = left
                else:
                    self._unconfirmed.pop(it.execution_id, None)
                if it.done is not None:
                    it.done.set()
            self._inflight = 0
            self._cond.notify_all()
        if self._on_result is not None:
            for it, seq in zip(batch, results, strict=True):
                self._on_result(it.execution_id, it.event, seq)
