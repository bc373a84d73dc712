"""Execution records in Redis: creation, reads, and the transitions that happen without an event.

The publish script updates status fields atomically with the event that changes them; the
scripts here (events/lua) do the rest: claim, cancel request, reaping, a playbook's hand-off
between steps and its `max_concurrent` slots.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import redis

from events.keys import Keys
from events.records import ExecutionRecord, StepRecord, as_str, decode_hash, record_from_hash
from events.scripts import script
from events.settings import Settings
from events.vocabulary import CommandType, Outcome, RecordField, Status

F = RecordField


class RecordStore:
    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings) -> None:
        self._redis = client
        self._keys = keys
        self._settings = settings
        self._claim = client.register_script(script("claim"))
        self._cancel = client.register_script(script("cancel"))
        self._hand_off = client.register_script(script("hand_off"))
        self._handed_off = client.register_script(script("handed_off"))
        self._mark_lost = client.register_script(script("mark_lost"))
        self._queue_first = client.register_script(script("queue_first"))
        self._take_slot = client.register_script(script("take_slot"))
        self._release_slot = client.register_script(script("release_slot"))

    # -- creation and reads -----------------------------------------------------------------
    def create(
        self,
        execution_id: str,
        *,
        command: str,
        command_type: CommandType,
        options: Mapping[str, Any],
        queued_at: str,
        spec: Mapping[str, Any] | None = None,
        steps: list[StepRecord] | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        """A new record, queued; listed from now on (the index is trimmed to the history TTL)."""
        key = self._keys.record(execution_id)
        fields: dict[str, str] = {
            F.EXECUTION_ID: execution_id,
            F.COMMAND: command,
            F.COMMAND_TYPE: command_type,
            F.STATUS: Status.QUEUED,
            F.OPTIONS: json.dumps(dict(options)),
            F.QUEUED_AT: queued_at,
        }
        if spec is not None:
            fields[F.SPEC] = json.dumps(dict(spec))
        if steps is not None:
            fields[F.STEPS] = json.dumps([s.model_dump(mode="json", by_alias=True) for s in steps])
        fields.update(extra or {})
        now_ms = int(time.time() * 1000)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        pipe.expire(key, self._settings.history_ttl_s)
        pipe.zadd(self._keys.index(), {execution_id: now_ms})
        pipe.zremrangebyscore(
            self._keys.index(), "-inf", now_ms - self._settings.history_ttl_s * 1000
        )
        pipe.execute()

    def raw(self, execution_id: str) -> dict[str, str]:
        return decode_hash(self._redis.hgetall(self._keys.record(execution_id)))

    def field(self, execution_id: str, name: str) -> str | None:
        v = self._redis.hget(self._keys.record(execution_id), name)
        return None if v is None else as_str(v)

    def fields(self, execution_id: str, *names: str) -> list[str | None]:
        values: list[Any] = self._redis.hmget(self._keys.record(execution_id), list(names))
        return [None if v is None else as_str(v) for v in values]

    def get(self, execution_id: str) -> ExecutionRecord | None:
        raw = self.raw(execution_id)
        return record_from_hash(raw) if raw.get(F.STATUS) else None

    def spec(self, execution_id: str) -> dict[str, Any] | None:
        v = self.field(execution_id, F.SPEC)
        return None if v is None else dict(json.loads(v))

    def recent(self, *, status: Status | None = None, limit: int = 50) -> list[ExecutionRecord]:
        """Newest first (the relay lists through api.store.Store.search)."""
        out: list[ExecutionRecord] = []
        start = 0
        page = max(limit, 100)
        while len(out) < limit:
            ids: Any = self._redis.zrevrange(self._keys.index(), start, start + page - 1)
            if not ids:
                break
            pipe = self._redis.pipeline(transaction=False)
            for ex in ids:
                pipe.hgetall(self._keys.record(as_str(ex)))
            for h in pipe.execute():
                raw = decode_hash(h)
                if raw.get(F.STATUS) and (status is None or raw[F.STATUS] == status):
                    out.append(record_from_hash(raw))
                    if len(out) >= limit:
                        break
            start += page
        return out

    def update(self, execution_id: str, fields: Mapping[str, str | int]) -> None:
        self._redis.hset(
            self._keys.record(execution_id), mapping={k: str(v) for k, v in fields.items()}
        )

    # -- transitions --------------------------------------------------------------------------
    def _lease_keys(self, execution_id: str) -> list[str]:
        k = self._keys
        return [k.record(execution_id), k.lease(execution_id), k.running()]

    def claim(
        self,
        execution_id: str,
        worker: str,
        task_id: str,
        *,
        expect: Status = Status.QUEUED,
        step: int | None = None,
    ) -> str:
        """Take an execution in status `expect` for this worker; returns 'ok' or why not.

        For a playbook, `step` is the index of the step to run: it must be the one queued
        ('stale' otherwise), and `expect` is 'running' for every step after the first.
        """
        res = self._claim(
            keys=self._lease_keys(execution_id),
            args=[
                expect,
                worker,
                self._settings.lease_ttl_s,
                task_id,
                execution_id,
                "" if step is None else str(step),
            ],
        )
        return as_str(res)

    def hand_off(self, execution_id: str, step: int, task_id: str, worker: str) -> str:
        """Between two steps: mark step `step` queued as task `task_id`, its send pending, the
        lease renewed for `worker`; 'ok', 'cancel' or 'ended' (see hand_off.lua)."""
        res = self._hand_off(
            keys=self._lease_keys(execution_id),
            args=[step, task_id, execution_id, worker, self._settings.lease_ttl_s],
        )
        return as_str(res)

    def handed_off(self, execution_id: str, step: int) -> bool:
        """Step `step`'s task was sent: let the run go (lease and running set) unless it moved
        on already (see handed_off.lua)."""
        res = self._handed_off(keys=self._lease_keys(execution_id), args=[step, execution_id])
        return bool(res)

    def queue_first_step(self, execution_id: str, task_id: str) -> str:
        """A queued playbook is about to send its first step's task; 'ok' or what stops it."""
        return as_str(self._queue_first(keys=[self._keys.record(execution_id)], args=[task_id]))

    def take_slot(self, execution_id: str, name: str, limit: int) -> bool:
        """One of the `limit` slots of playbook `name`; False: the run joined the waiting list."""
        k = self._keys
        res = self._take_slot(
            keys=[k.slots(name), k.waiting(name)],
            args=[execution_id, limit, int(time.time() * 1000)],
        )
        return as_str(res) == Outcome.OK

    def release_slot(self, execution_id: str, name: str, limit: int) -> list[str]:
        """Free the run's slot (or its place in the waiting list); the runs given a slot."""
        k = self._keys
        res: Any = self._release_slot(
            keys=[k.slots(name), k.waiting(name)],
            args=[execution_id, limit, int(time.time() * 1000)],
        )
        return [as_str(x) for x in res]

    def slot_holders(self, name: str) -> list[str]:
        holders: Any = self._redis.zrange(self._keys.slots(name), 0, -1)
        return [as_str(x) for x in holders]

    def renew_lease(self, execution_id: str, worker: str) -> None:
        self._redis.set(self._keys.lease(execution_id), worker, ex=self._settings.lease_ttl_s)

    def release(self, execution_id: str) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(self._keys.lease(execution_id))
        pipe.srem(self._keys.running(), execution_id)
        pipe.execute()

    def request_cancel(self, execution_id: str, cancelled_by: str | None = None) -> str:
        """Mark the cancel (and who asked, `cancelledBy`); 'unknown', 'ended:<status>',
        'queued' (nothing runs it: the caller ends it) or the status it runs in (cancel.lua)."""
        keys = [self._keys.record(execution_id)]
        return as_str(self._cancel(keys=keys, args=[cancelled_by or ""]))

    def cancel_requested(self, execution_id: str) -> bool:
        return self.field(execution_id, F.CANCEL_REQUESTED) == "1"

    def running_ids(self) -> list[str]:
        return [as_str(x) for x in self._redis.smembers(self._keys.running())]

    def mark_lost(self, execution_id: str, dead_pool_pid: int | None = None) -> bool:
        """Take a running execution from the running set as lost, if it still is (see
        mark_lost.lua); True when the caller must now end it."""
        res = self._mark_lost(
            keys=self._lease_keys(execution_id),
            args=[execution_id, "" if dead_pool_pid is None else str(dead_pool_pid)],
        )
        return bool(res)

    def lease_alive(self, execution_id: str) -> bool:
        return bool(self._redis.exists(self._keys.lease(execution_id)))
