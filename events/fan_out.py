"""A fan-out step's shared state in Redis: its hosts, who starts next, how each ended.

Every decision is `events/lua/fan_out.lua`, atomic: the step's first task freezes the host
list (`init`), each host's task claims its run once (`claim`), and each host's end (`end`)
takes the next hosts `parallel` allows, hands back the ones `max_failures` skips, and tells
exactly one caller that the step is over.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from events.keys import Keys
from events.records import HostRun, as_str
from events.scripts import script
from events.settings import Settings


@dataclass(frozen=True)
class Next:
    """What a caller of `init` or `end` does now: start these hosts' runs, end these hosts
    `skipped`, and, when `last`, end the step."""

    start: list[str]
    skip: list[str]
    last: bool


def _next(res: Any) -> Next:
    start, skip, last = res
    return Next([as_str(h) for h in start], [as_str(h) for h in skip], bool(last))


@dataclass(frozen=True)
class Claim:
    """A host's claim of its run: `outcome` 'ok' (run it), 'cancel' (end it cancelled) or
    'ended' (a duplicate, or lost); the record's `spec` (None once ended); `wave`, the size of
    the step's first wave when the host is one of it (it then waits at `gather`), else 0."""

    outcome: str
    spec: str | None
    wave: int


def _json(run: HostRun) -> str:
    return run.model_dump_json(by_alias=True, exclude_none=True)


class FanOutStore:
    def __init__(self, client: redis.Redis, keys: Keys, settings: Settings) -> None:
        self._redis = client
        self._keys = keys
        self._settings = settings
        self._script = client.register_script(script("fan_out"))

    def _keys_of(self, execution_id: str, step_number: int) -> list[str]:
        return [self._keys.fan_out(execution_id, step_number), self._keys.record(execution_id)]

    def init(
        self,
        execution_id: str,
        step_number: int,
        order: Sequence[str],
        *,
        parallel: int | None,
        max_failures: int | None,
        offline: Sequence[HostRun],
    ) -> Next:
        """Freeze the hosts to start (`order`); the `offline` ones failed already."""
        res = self._script(
            keys=self._keys_of(execution_id, step_number),
            args=[
                "init",
                json.dumps(list(order)),
                parallel or 0,
                "" if max_failures is None else max_failures,
                json.dumps({run.host: _json(run) for run in offline}),
                self._settings.history_ttl_s,
                step_number,
            ],
        )
        return _next(res)

    def claim(self, execution_id: str, step_number: int, host: str, task_id: str) -> Claim:
        """Claim `host`'s run once, renew its lease, and read what the run needs (Claim)."""
        lease = self._keys.host_lease(execution_id, step_number, host)
        outcome, spec, wave = self._script(
            keys=[*self._keys_of(execution_id, step_number), lease],
            args=["claim", host, task_id, self._settings.lease_ttl_s],
        )
        return Claim(as_str(outcome), None if spec is None else as_str(spec), int(wave))

    def end(self, execution_id: str, step_number: int, run: HostRun, *, started: bool) -> Next:
        """Record how `run.host` ended (counted once: a second end of a host changes nothing)."""
        res = self._script(
            keys=self._keys_of(execution_id, step_number),
            args=[
                "end",
                run.host,
                _json(run),
                "1" if run.status != "completed" else "0",
                "1" if started else "0",
            ],
        )
        return _next(res)

    def results(self, execution_id: str, step_number: int) -> dict[str, HostRun]:
        raw: Any = self._redis.hgetall(self._keys.fan_out(execution_id, step_number))
        out: dict[str, HostRun] = {}
        for k, v in raw.items():
            name = as_str(k)
            if name.startswith("r:"):
                out[name[2:]] = HostRun.model_validate_json(v)
        return out

    def started_hosts(self, execution_id: str, step_number: int) -> list[str]:
        """Hosts whose run was taken to start and has not ended (for the reaper)."""
        key = self._keys.fan_out(execution_id, step_number)
        order, taken = self._redis.hmget(key, ["order", "next"])
        if order is None:
            return []
        hosts = json.loads(order)[: int(taken or 0)]
        ended = self.results(execution_id, step_number)
        return [h for h in hosts if h not in ended]

    def record_pids(
        self, execution_id: str, step_number: int, host: str, pid: int, pool_pid: int
    ) -> None:
        """The host's command leader and pool process (its host's reaper judges by them)."""
        key = self._keys.fan_out(execution_id, step_number)
        self._redis.hset(key, f"p:{host}", f"{pid} {pool_pid}")

    def pids(self, execution_id: str, step_number: int, host: str) -> tuple[int, int]:
        v = self._redis.hget(self._keys.fan_out(execution_id, step_number), f"p:{host}")
        if v is None:
            return 0, 0
        pid, pool = as_str(v).split()
        return int(pid), int(pool)

    def claimed(self, execution_id: str, step_number: int, host: str) -> bool:
        key = self._keys.fan_out(execution_id, step_number)
        return bool(self._redis.hexists(key, f"c:{host}"))

    def take_loss(self, execution_id: str, step_number: int, host: str) -> bool:
        """Whether this caller (one of the reapers) is the one to end `host` lost: several
        notice a lapsed lease at once, one publishes (field `l:<host>`)."""
        key = self._keys.fan_out(execution_id, step_number)
        return bool(self._redis.hsetnx(key, f"l:{host}", "1"))

    def renew_host_lease(self, execution_id: str, step_number: int, host: str) -> None:
        self.renew_host_leases(execution_id, step_number, [host])

    def renew_host_leases(self, execution_id: str, step_number: int, hosts: Sequence[str]) -> None:
        """Every one of `hosts`' leases in one round trip (a step's first hosts, all at once)."""
        pipe = self._redis.pipeline(transaction=False)
        for host in hosts:
            key = self._keys.host_lease(execution_id, step_number, host)
            pipe.set(key, host, ex=self._settings.lease_ttl_s)
        pipe.execute()

    def gather(self, execution_id: str, step_number: int, wave: int, timeout_s: float) -> bool:
        """A start barrier for the step's first `wave` hosts: each calls this when its run is
        ready to start, and all go when the last arrives, or each after `timeout_s` at most
        (a host whose worker is busy, or whose send failed, delays the others by that much,
        never more). Their tasks are sent one after another and each reaches its worker a
        broker round trip or more after the one before: without it, the first host's command
        ran while the last one's task was still being sent (issue 14's start skew). True
        when released by the last arrival."""
        ready, go = self._keys.fan_out_go(execution_id, step_number)
        ttl = self._settings.lease_ttl_s * 4
        pipe = self._redis.pipeline(transaction=False)
        # EVAL, not a registered Script: in a pipeline redis-py asks SCRIPT EXISTS first, a
        # round trip more; Redis keeps the script by its hash either way.
        pipe.eval(script("gather"), 2, ready, go, wave, ttl)
        pipe.blpop([go], timeout=timeout_s)
        arrived, token = pipe.execute()
        return int(arrived) <= wave and token is not None

    def host_lease_alive(self, execution_id: str, step_number: int, host: str) -> bool:
        return bool(self._redis.exists(self._keys.host_lease(execution_id, step_number, host)))
