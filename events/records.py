"""The execution record: what GET /api/executions/{id} shows, kept in a Redis hash.

The publish script updates status fields atomically with the event that changes them; the
scripts here do the transitions that happen without an event (claim, cancel request, reaping,
a playbook's hand-off between steps and its `max_concurrent` slots).

Fields of the hash besides the record's own: `spec` (what the worker runs), `taskId` (the Celery
task to revoke), `cancelRequested`, `pid`/`workerPid` (the running command and pool process),
`completeId`; for playbooks `stepQueued` (the index of the step whose task is queued and not yet
claimed: the run is between two steps, or waits for its first), `handOff` (that step's index
while its task is being sent: the worker that handed off still answers for the run), `stepIndex`
(the step claimed last), `step:<n>` (step n's fields, see record_from_hash), and with
`max_concurrent` `slotName` and `maxConcurrent`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from events.keys import Keys
from events.models import TERMINAL_STATUSES, Status
from events.settings import Settings


class StepRecord(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    step_id: str
    step_name: str
    status: str = "pending"
    exit_code: int | None = None
    duration_ms: int | None = None
    worker: str | None = None
    attempts: int | None = None
    error: str | None = None
    started_at: str | None = None


class ExecutionRecord(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    execution_id: str
    command: str
    command_type: str
    status: str
    options: dict[str, Any] = {}
    queued_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    duration_ms: int | None = None
    exit_code: int | None = None
    error: str | None = None
    worker: str | None = None
    steps: list[StepRecord] | None = None
    output_truncated: bool | None = None
    cancel_requested: bool | None = None

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


# Returns "ok" when the caller now owns the execution, else the reason it may not run it.
# ARGV[6] is a playbook step's index ('' for a command): only the step whose task was queued last
# (`stepQueued`) may run, and only once. The previous step's pool process ids are dropped so
# that the reaper never judges this run by a process of another host.
CLAIM_LUA = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'unknown' end
if redis.call('HEXISTS', KEYS[1], 'completeId') == 1 then return 'ended' end
if status ~= ARGV[1] then return status end
local step = ARGV[6]
if step ~= '' and redis.call('HGET', KEYS[1], 'stepQueued') ~= step then return 'stale' end
if redis.call('HGET', KEYS[1], 'cancelRequested') == '1' then return 'cancel' end
if step ~= '' then
  redis.call('HDEL', KEYS[1], 'stepQueued', 'handOff')
  redis.call('HSET', KEYS[1], 'stepIndex', step)
end
redis.call('HDEL', KEYS[1], 'pid', 'workerPid')
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[2], 'taskId', ARGV[4])
redis.call('SET', KEYS[2], ARGV[2], 'EX', tonumber(ARGV[3]))
redis.call('SADD', KEYS[3], ARGV[5])
return 'ok'
"""

# Marks the cancel request; returns the status it found ('unknown' when there is no record,
# 'ended:<status>' when it already ended). A queued execution becomes cancelled at once, so no
# worker claims it afterwards; the caller then publishes its cancelled + complete events. A
# playbook between two steps (its next step queued, not claimed) counts as queued: no worker
# holds it, so the caller ends it the same way and the late step's claim refuses.
CANCEL_LUA = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'unknown' end
if redis.call('HEXISTS', KEYS[1], 'completeId') == 1 then return 'ended:' .. status end
redis.call('HSET', KEYS[1], 'cancelRequested', '1')
local between = status == 'running' and redis.call('HEXISTS', KEYS[1], 'stepQueued') == 1
if status == 'queued' or between then
  redis.call('HDEL', KEYS[1], 'stepQueued', 'handOff')
  redis.call('HSET', KEYS[1], 'status', 'cancelled')
  return 'queued'
end
return status
"""

# A playbook's step ended and the next one is about to be queued: the next step is marked
# queued (a cancel now ends the run at once, CANCEL_LUA) and `handOff` says its task is being
# sent. Until HANDED_OFF_LUA confirms the send, the run keeps a fresh lease and its place in the
# running set, so a worker that dies before sending is declared lost like any other (nothing
# would ever run the next step). Returns 'ok', 'cancel' (a cancel came first: the caller ends
# the run) or 'ended'.
HAND_OFF_LUA = """
if redis.call('HEXISTS', KEYS[1], 'completeId') == 1 then return 'ended' end
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 'ended' end
if redis.call('HGET', KEYS[1], 'cancelRequested') == '1' then return 'cancel' end
redis.call('HSET', KEYS[1], 'stepQueued', ARGV[1], 'taskId', ARGV[2], 'handOff', ARGV[1])
redis.call('SET', KEYS[2], ARGV[4], 'EX', tonumber(ARGV[5]))
return 'ok'
"""

# The next step's task is in the broker: from now until its claim no worker holds the run, so
# it leaves the running set (the reaper must not declare it lost while the step waits in a
# queue). Only if that step's hand-off is still pending: a fast claim on another host (which
# took the run, lease and all) or a cancel came first otherwise. Returns 1 or 0.
HANDED_OFF_LUA = """
if redis.call('HGET', KEYS[1], 'handOff') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'handOff')
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[2])
return 1
"""

# The reaper's decision, taken atomically with what it checks: the run is still in the running
# set, running, not between two steps (a hand-off whose task is not sent yet does not count),
# and its lease expired (or, with ARGV[2], its pool process
# ARGV[2] died and no later claim replaced it). A scan reads the running set, the record and the
# lease one after the other; a playbook handing off to its next step in between would otherwise
# look lost. Marks it failed at once so that no later claim or hand-off of it succeeds.
MARK_LOST_LUA = """
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('HEXISTS', KEYS[1], 'completeId') == 1 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'stepQueued') == 1
  and redis.call('HEXISTS', KEYS[1], 'handOff') == 0 then return 0 end
if ARGV[2] == '' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
elseif redis.call('HGET', KEYS[1], 'workerPid') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'failed')
redis.call('SREM', KEYS[3], ARGV[1])
return 1
"""

# A queued playbook that got its slot: mark its first step queued. Returns 'ok', or the status
# that stops it (a cancelled run must give its slot back).
QUEUE_FIRST_LUA = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'unknown' end
if redis.call('HEXISTS', KEYS[1], 'completeId') == 1 then return 'ended' end
if status ~= 'queued' then return status end
if redis.call('HGET', KEYS[1], 'cancelRequested') == '1' then return 'cancel' end
redis.call('HSET', KEYS[1], 'stepQueued', '0', 'taskId', ARGV[1])
return 'ok'
"""

# Take one of `max` slots (ARGV[2]) or join the waiting list: 'ok' or 'wait'. Invariant kept
# with RELEASE_SLOT_LUA: runs wait only while every slot is taken, in submission order.
TAKE_SLOT_LUA = """
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 'ok' end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) and redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 'ok'
end
redis.call('RPUSH', KEYS[2], ARGV[1])
return 'wait'
"""

# Give a slot back and hand the free slots to the runs waiting longest; returns those runs (the
# caller starts them, or releases them again if they were cancelled meanwhile). A run that held
# no slot is only taken off the waiting list, so a double release promotes nobody.
RELEASE_SLOT_LUA = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then
  redis.call('LREM', KEYS[2], 0, ARGV[1])
  return {}
end
local promoted = {}
while redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) do
  local nxt = redis.call('LPOP', KEYS[2])
  if not nxt then break end
  redis.call('ZADD', KEYS[1], ARGV[3], nxt)
  table.insert(promoted, nxt)
end
return promoted
"""


class RecordStore:
    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings) -> None:
        self._redis = client
        self._keys = keys
        self._settings = settings
        self._claim = client.register_script(CLAIM_LUA)
        self._cancel = client.register_script(CANCEL_LUA)
        self._hand_off = client.register_script(HAND_OFF_LUA)
        self._handed_off = client.register_script(HANDED_OFF_LUA)
        self._mark_lost = client.register_script(MARK_LOST_LUA)
        self._queue_first = client.register_script(QUEUE_FIRST_LUA)
        self._take_slot = client.register_script(TAKE_SLOT_LUA)
        self._release_slot = client.register_script(RELEASE_SLOT_LUA)

    def create(
        self,
        execution_id: str,
        *,
        command: str,
        command_type: str,
        options: Mapping[str, Any],
        queued_at: str,
        spec: Mapping[str, Any] | None = None,
        steps: list[StepRecord] | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        key = self._keys.record(execution_id)
        fields: dict[str, str] = {
            "executionId": execution_id,
            "command": command,
            "commandType": command_type,
            "status": Status.QUEUED.value,
            "options": json.dumps(dict(options)),
            "queuedAt": queued_at,
        }
        if spec is not None:
            fields["spec"] = json.dumps(dict(spec))
        if steps is not None:
            fields["steps"] = json.dumps([s.model_dump(by_alias=True) for s in steps])
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

    def create_raw(self, execution_id: str, fields: Mapping[str, str]) -> None:
        """A record from ready hash fields (the embedded mode builds them itself)."""
        now_ms = int(time.time() * 1000)
        pipe = self._redis.pipeline(transaction=True)
        mapping: dict[str, str] = {"executionId": execution_id, **fields}
        pipe.hset(self._keys.record(execution_id), mapping=mapping)  # type: ignore[arg-type]
        pipe.expire(self._keys.record(execution_id), self._settings.history_ttl_s)
        pipe.zadd(self._keys.index(), {execution_id: now_ms})
        pipe.execute()

    def raw(self, execution_id: str) -> dict[str, str]:
        data = self._redis.hgetall(self._keys.record(execution_id))
        return {_s(k): _s(v) for k, v in data.items()}

    def field(self, execution_id: str, name: str) -> str | None:
        v = self._redis.hget(self._keys.record(execution_id), name)
        return None if v is None else _s(v)

    def fields(self, execution_id: str, *names: str) -> list[str | None]:
        values: list[Any] = self._redis.hmget(self._keys.record(execution_id), list(names))
        return [None if v is None else _s(v) for v in values]

    def get(self, execution_id: str) -> ExecutionRecord | None:
        raw = self.raw(execution_id)
        return record_from_hash(raw) if raw.get("status") else None

    def spec(self, execution_id: str) -> dict[str, Any] | None:
        v = self.field(execution_id, "spec")
        return None if v is None else dict(json.loads(v))

    def recent(self, *, status: str | None = None, limit: int = 50) -> list[ExecutionRecord]:
        out: list[ExecutionRecord] = []
        start = 0
        page = max(limit, 100)
        while len(out) < limit:
            ids: Any = self._redis.zrevrange(self._keys.index(), start, start + page - 1)
            if not ids:
                break
            pipe = self._redis.pipeline(transaction=False)
            for ex in ids:
                pipe.hgetall(self._keys.record(_s(ex)))
            for h in pipe.execute():
                raw = {_s(k): _s(v) for k, v in h.items()}
                if not raw.get("status"):
                    continue
                if status is None or raw["status"] == status:
                    out.append(record_from_hash(raw))
                    if len(out) >= limit:
                        break
            start += page
        return out

    def update(self, execution_id: str, fields: Mapping[str, str | int]) -> None:
        self._redis.hset(
            self._keys.record(execution_id), mapping={k: str(v) for k, v in fields.items()}
        )

    def claim(
        self,
        execution_id: str,
        worker: str,
        task_id: str,
        *,
        expect: str = "queued",
        step: int | None = None,
    ) -> str:
        """Take an execution in status `expect` for this worker; returns 'ok' or why not.

        For a playbook, `step` is the index of the step to run: it must be the one queued
        ('stale' otherwise), and `expect` is 'running' for every step after the first.
        """
        k = self._keys
        res = self._claim(
            keys=[k.record(execution_id), k.lease(execution_id), k.running()],
            args=[
                expect,
                worker,
                self._settings.lease_ttl_s,
                task_id,
                execution_id,
                "" if step is None else str(step),
            ],
        )
        return _s(res)

    def hand_off(self, execution_id: str, step: int, task_id: str, worker: str) -> str:
        """Between two steps: mark step `step` queued as task `task_id`, its send pending, the
        lease renewed for `worker`; 'ok', 'cancel' or 'ended' (see HAND_OFF_LUA)."""
        k = self._keys
        res = self._hand_off(
            keys=[k.record(execution_id), k.lease(execution_id), k.running()],
            args=[step, task_id, execution_id, worker, self._settings.lease_ttl_s],
        )
        return _s(res)

    def handed_off(self, execution_id: str, step: int) -> bool:
        """Step `step`'s task was sent: let the run go (lease and running set) unless it moved
        on already (see HANDED_OFF_LUA)."""
        k = self._keys
        res = self._handed_off(
            keys=[k.record(execution_id), k.lease(execution_id), k.running()],
            args=[step, execution_id],
        )
        return bool(res)

    def queue_first_step(self, execution_id: str, task_id: str) -> str:
        """A queued playbook is about to send its first step's task; 'ok' or what stops it."""
        return _s(self._queue_first(keys=[self._keys.record(execution_id)], args=[task_id]))

    def take_slot(self, execution_id: str, name: str, limit: int) -> bool:
        """One of the `limit` slots of playbook `name`; False: the run joined the waiting list."""
        k = self._keys
        res = self._take_slot(
            keys=[k.slots(name), k.waiting(name)],
            args=[execution_id, limit, int(time.time() * 1000)],
        )
        return _s(res) == "ok"

    def release_slot(self, execution_id: str, name: str, limit: int) -> list[str]:
        """Free the run's slot (or its place in the waiting list); the runs given a slot."""
        k = self._keys
        res: Any = self._release_slot(
            keys=[k.slots(name), k.waiting(name)],
            args=[execution_id, limit, int(time.time() * 1000)],
        )
        return [_s(x) for x in res]

    def slot_holders(self, name: str) -> list[str]:
        holders: Any = self._redis.zrange(self._keys.slots(name), 0, -1)
        return [_s(x) for x in holders]

    def renew_lease(self, execution_id: str, worker: str) -> None:
        self._redis.set(self._keys.lease(execution_id), worker, ex=self._settings.lease_ttl_s)

    def release(self, execution_id: str) -> None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(self._keys.lease(execution_id))
        pipe.srem(self._keys.running(), execution_id)
        pipe.execute()

    def request_cancel(self, execution_id: str) -> str:
        return _s(self._cancel(keys=[self._keys.record(execution_id)]))

    def cancel_requested(self, execution_id: str) -> bool:
        return self.field(execution_id, "cancelRequested") == "1"

    def running_ids(self) -> list[str]:
        return [_s(x) for x in self._redis.smembers(self._keys.running())]

    def mark_lost(self, execution_id: str, dead_pool_pid: int | None = None) -> bool:
        """Take a running execution from the running set as lost, if it still is (see
        MARK_LOST_LUA); True when the caller must now end it."""
        k = self._keys
        res = self._mark_lost(
            keys=[k.record(execution_id), k.lease(execution_id), k.running()],
            args=[execution_id, "" if dead_pool_pid is None else str(dead_pool_pid)],
        )
        return bool(res)

    def lease_alive(self, execution_id: str) -> bool:
        return bool(self._redis.exists(self._keys.lease(execution_id)))


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _int_or_none(v: str | None) -> int | None:
    return None if v is None or v == "" else int(v)


def record_from_hash(raw: Mapping[str, str]) -> ExecutionRecord:
    steps: list[StepRecord] | None = None
    if raw.get("steps"):
        # The initial list, each step overlaid by its `step:<n>` field from the step events.
        steps = []
        for n, base in enumerate(json.loads(raw["steps"]), start=1):
            over = raw.get(f"step:{n}")
            steps.append(StepRecord.model_validate({**base, **(json.loads(over) if over else {})}))
    return ExecutionRecord(
        execution_id=raw.get("executionId", ""),
        command=raw.get("command", ""),
        command_type=raw.get("commandType", ""),
        status=raw["status"],
        options=json.loads(raw.get("options") or "{}"),
        queued_at=raw.get("queuedAt") or None,
        started_at=raw.get("startedAt") or None,
        completed_at=raw.get("completedAt") or None,
        duration_ms=_int_or_none(raw.get("durationMs")),
        exit_code=_int_or_none(raw.get("exitCode")),
        error=raw.get("error") or None,
        worker=raw.get("worker") or None,
        steps=steps,
        output_truncated=True if raw.get("outputTruncated") == "1" else None,
        cancel_requested=True if raw.get("cancelRequested") == "1" else None,
    )
