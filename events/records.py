"""The execution record: what GET /api/executions/{id} shows, kept in a Redis hash.

The publish script updates status fields atomically with the event that changes them; the
scripts here do the transitions that happen without an event (claim, cancel request, reaping).
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
CLAIM_LUA = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'unknown' end
if redis.call('HEXISTS', KEYS[1], 'completeId') == 1 then return 'ended' end
if status ~= ARGV[1] then return status end
if redis.call('HGET', KEYS[1], 'cancelRequested') == '1' then return 'cancel' end
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[2], 'taskId', ARGV[4])
redis.call('SET', KEYS[2], ARGV[2], 'EX', tonumber(ARGV[3]))
redis.call('SADD', KEYS[3], ARGV[5])
return 'ok'
"""

# Marks the cancel request; returns the status it found ('unknown' when there is no record,
# 'ended:<status>' when it already ended). A queued execution becomes cancelled at once, so no
# worker claims it afterwards; the caller then publishes its cancelled + complete events.
CANCEL_LUA = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'unknown' end
if redis.call('HEXISTS', KEYS[1], 'completeId') == 1 then return 'ended:' .. status end
redis.call('HSET', KEYS[1], 'cancelRequested', '1')
if status == 'queued' then redis.call('HSET', KEYS[1], 'status', 'cancelled') end
return status
"""


class RecordStore:
    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings) -> None:
        self._redis = client
        self._keys = keys
        self._settings = settings
        self._claim = client.register_script(CLAIM_LUA)
        self._cancel = client.register_script(CANCEL_LUA)

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
        data = self._redis.hgetall(self._keys.record(execution_id))
        return {_s(k): _s(v) for k, v in data.items()}

    def field(self, execution_id: str, name: str) -> str | None:
        v = self._redis.hget(self._keys.record(execution_id), name)
        return None if v is None else _s(v)

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

    def claim(self, execution_id: str, worker: str, task_id: str, *, expect: str = "queued") -> str:
        """Take a queued execution for this worker; returns 'ok' or why not."""
        k = self._keys
        res = self._claim(
            keys=[k.record(execution_id), k.lease(execution_id), k.running()],
            args=[expect, worker, self._settings.lease_ttl_s, task_id, execution_id],
        )
        return _s(res)

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
