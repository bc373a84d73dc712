"""A fleet with a history database for the acceptance tests: a private redis-server, a real
`cloudops worker`, a real relay (`cloudops relay`'s app, archiver included) on PostgreSQL, and
what a client sees of an execution through the relay (record, output, SSE replay)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis as redis_py

from events.settings import Settings
from tests.helpers import (
    ManagedProcess,
    PrivateRedis,
    cloudops_argv,
    start_process,
    worker_env,
)
from tests.relay.helpers import RelayProcess, sse_events, start_relay

TOKEN = "tok-" + uuid.uuid4().hex
# The headers of a playbook's YAML body (`PUT /api/playbooks/{name}`).
YAML = {"Content-Type": "text/yaml"}


@dataclass(frozen=True)
class Seen:
    """One execution as a client of the relay sees it."""

    record: bytes
    output: bytes
    sse: tuple[tuple[int | None, str, str], ...]


@dataclass
class Fleet:
    tmp: Path
    database_url: str
    prefix: str = field(default_factory=lambda: "h" + uuid.uuid4().hex[:10])
    redis: PrivateRedis | None = None
    worker: ManagedProcess | None = None
    relay: RelayProcess | None = None
    starts: int = 0

    @property
    def settings(self) -> Settings:
        assert self.redis is not None
        return Settings(redis_url=self.redis.url, key_prefix=self.prefix, kill_grace_s=1.0)

    def start(self, *, concurrency: int = 4, loglevel: str = "INFO") -> None:
        """A brand-new Redis, a worker (logging at `loglevel`) and a relay on it (the database
        stays)."""
        self.starts += 1
        self.redis = PrivateRedis(self.tmp, persistent=False)
        self.redis.start()
        env = {"CLOUDOPS_DATABASE_URL": self.database_url}
        name = f"hist{self.starts}@test"
        argv = cloudops_argv(
            "worker", "--concurrency", str(concurrency), "--hostname", name, "--loglevel", loglevel
        )
        log = self.tmp / f"worker-{self.starts}.log"
        self.worker = start_process(argv, worker_env(self.settings, env), log, name)
        self.worker.wait_for_log(" ready.", timeout_s=60)
        self.relay = start_relay(
            self.settings,
            self.tmp / f"relay-{self.starts}.log",
            tokens=(TOKEN,),
            env={"RELAY_TEST_DISPATCHER": "celery", **env},
        )

    def stop(self) -> None:
        if self.relay is not None:
            self.relay.stop()
        if self.worker is not None:
            self.worker.stop(timeout_s=10)
        if self.redis is not None:
            self.redis.kill()
        self.relay = self.worker = self.redis = None

    def api(self) -> httpx.Client:
        assert self.relay is not None
        return self.relay.client(timeout=30.0)

    def client(self) -> redis_py.Redis:
        assert self.redis is not None
        return redis_py.Redis.from_url(self.redis.url)

    def forget_everything(self) -> int:
        """Delete every key under the prefix from this (private) Redis; how many."""
        client = self.client()
        try:
            n = 0
            for key in list(client.scan_iter(match=f"{self.prefix}:*", count=1000)):
                n += int(client.delete(key))
            return n
        finally:
            client.close()


@contextmanager
def running_fleet(tmp: Path, database_url: str, *, concurrency: int = 4) -> Iterator[Fleet]:
    """A started Fleet, stopped at the end (a module fixture's body)."""
    f = Fleet(tmp, database_url)
    f.start(concurrency=concurrency)
    try:
        yield f
    finally:
        f.stop()


def put_playbook(api: httpx.Client, name: str, text: str | bytes) -> httpx.Response:
    """Save `text` as the next version of playbook `name` through the relay."""
    return api.put(f"/api/playbooks/{name}", content=text, headers=YAML)


def see(api: httpx.Client, execution_id: str) -> Seen:
    rec = api.get(f"/api/executions/{execution_id}")
    assert rec.status_code == 200, (execution_id, rec.status_code, rec.text)
    out = api.get(f"/api/executions/{execution_id}/output")
    assert out.status_code == 200, (execution_id, out.text)
    with api.stream("GET", f"/api/executions/{execution_id}/events") as stream:
        assert stream.status_code == 200
        sse = tuple((m.id, m.event, m.data) for m in sse_events(stream.iter_lines()))
    return Seen(rec.content, out.content, sse)


def see_all(fleet: Fleet, ids: Iterable[str], threads: int = 6) -> dict[str, Seen]:
    ids = list(ids)

    def part(chunk: list[str]) -> dict[str, Seen]:
        with fleet.api() as api:
            return {ex: see(api, ex) for ex in chunk}

    chunks = [ids[i::threads] for i in range(threads)]
    out: dict[str, Seen] = {}
    with ThreadPoolExecutor(threads) as pool:
        for got in pool.map(part, chunks):
            out.update(got)
    return out


def list_all(api: httpx.Client, limit: int = 97, **filters: Any) -> Iterator[dict[str, Any]]:
    """Every page of the list with these filters, following X-Next-Cursor."""
    params: dict[str, Any] = {**filters, "limit": limit}
    while True:
        resp = api.get("/api/executions", params=params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        assert isinstance(page, list) and len(page) <= limit
        yield from page
        cursor = resp.headers.get("X-Next-Cursor")
        if not cursor:
            return
        params["cursor"] = cursor


def playbook(i: int) -> dict[str, Any]:
    return {
        "name": f"Nightly Check {i}",
        "steps": [
            {"name": "first", "command": f"echo step one {i}"},
            {"name": "second", "command": "echo step two >&2"},
        ],
    }
