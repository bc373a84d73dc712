"""A private fleet for one benchmark row: its own key prefix on the shared Redis, real
`cloudops worker` processes on it, a dispatcher, and a Follower factory. Everything it started
is stopped, and every key under its prefix deleted, when the `with` block ends."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis

from events.clients import redis_for
from events.hosts import HostRegistry
from events.keys import Keys
from events.record_store import RecordStore
from events.settings import Settings
from events.subscriber import Follower
from events.wire import RawEvent
from tests.benchmarks.core import Context, wait_for
from tests.helpers import (
    CeleryDispatcher,
    ManagedProcess,
    cloudops_argv,
    start_process,
    stop_all,
    worker_env,
)


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    batch: list[Any] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            client.delete(*batch)
            batch = []
    if batch:
        client.delete(*batch)


class Fleet:
    """`concurrency=0`: no worker, submitted executions stay queued. `settings`: another Redis
    (Sentinel) or broker than the run's Redis; its key prefix must be the row's own."""

    def __init__(
        self,
        ctx: Context,
        row_name: str,
        *,
        concurrency: int,
        env: dict[str, str] | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.ctx = ctx
        self.name = row_name
        self.concurrency = concurrency
        self.settings = settings or Settings(
            redis_url=ctx.redis_url, key_prefix=ctx.key_prefix(row_name)
        )
        self.keys = Keys(self.settings.key_prefix)
        self._env = env
        self.workers: list[ManagedProcess] = []
        self.redis: redis.Redis = redis_for(self.settings)
        self.records = RecordStore(self.redis, self.keys, self.settings)
        self._dispatcher: CeleryDispatcher | None = None

    # -- lifetime -----------------------------------------------------------------------------
    def __enter__(self) -> Fleet:
        try:
            if self.concurrency > 0:
                self.start_worker(self.concurrency)
            self._dispatcher = CeleryDispatcher(self.settings)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_worker(self, concurrency: int) -> ManagedProcess:
        n = len(self.workers) + 1
        hostname = f"bench{n}-{self.name}@{self.ctx.run_id}"
        # INFO: the " ready." line we wait for is logged at that level.
        argv = cloudops_argv("worker", "--concurrency", str(concurrency), "--hostname", hostname)
        log_path = self.ctx.log_dir / f"{self.name}-worker{n}.log"
        proc = start_process(argv, worker_env(self.settings, self._env), log_path, hostname)
        self.workers.append(proc)
        proc.wait_for_log(" ready.", timeout_s=90)
        return proc

    def start_hosts(
        self, hostnames: list[str], queue: str, *, preload: str | None = None, timeout_s: float = 90
    ) -> None:
        """One worker (concurrency 1) per hostname, consuming `queue`, all started at once (one
        after another, twenty would take minutes); back once the host registry lists every one
        online. `preload`: a module each worker imports first (cloudops_argv)."""
        for host in hostnames:
            args = ("worker", "--concurrency", "1", "--hostname", host, "--queues", queue)
            log_path = self.ctx.log_dir / f"{self.name}-{host}.log"
            argv = cloudops_argv(*args, preload=preload)
            self.workers.append(start_process(argv, worker_env(self.settings), log_path, host))
        registry = HostRegistry(self.keys)

        def all_online() -> bool:
            for proc in self.workers:
                if proc.proc.poll() is not None:
                    raise RuntimeError(f"{proc.name} exited early:\n{proc.log()[-3000:]}")
            online = {h["hostname"] for h in registry.read(self.redis) if h["online"]}
            return online >= set(hostnames)

        wait_for(all_online, timeout_s, f"{len(hostnames)} workers online", interval_s=0.2)

    def close(self) -> None:
        stop_all(self.workers, timeout_s=15)
        self.workers.clear()
        if self._dispatcher is not None:
            self._dispatcher.rt.publisher.close(timeout_s=5)
            self._dispatcher.rt.redis.close()
            self._dispatcher.app.close()
            self._dispatcher = None
        delete_prefix(self.redis, self.settings.key_prefix)
        self.redis.close()

    # -- use ----------------------------------------------------------------------------------
    @property
    def dispatcher(self) -> CeleryDispatcher:
        assert self._dispatcher is not None, "use the fleet inside its with block"
        return self._dispatcher

    def submit(self, command: str) -> str:
        return self.dispatcher.submit_command(command, "script")

    def follower(self, execution_id: str, **kwargs: Any) -> Follower:
        return Follower(self.redis, self.keys, execution_id, **kwargs)

    def watch(self, execution_id: str) -> EventWatch:
        return EventWatch(self, execution_id)

    def wait_complete(self, execution_id: str, timeout_s: float = 60.0) -> str:
        """Follow the execution to its end; its final status."""
        deadline = time.monotonic() + timeout_s
        for ev in self.follower(execution_id, idle_timeout_s=timeout_s):
            if ev.terminal:
                return str(self.records.field(execution_id, "status"))
            if time.monotonic() > deadline:
                break
        raise TimeoutError(f"{execution_id} did not complete within {timeout_s:g} s")


class EventWatch:
    """A Follower of one execution in a thread, stamping each event with its arrival time
    (time.monotonic) so the caller can wait for an event while doing something else."""

    def __init__(self, fleet: Fleet, execution_id: str) -> None:
        self.execution_id = execution_id
        self.arrivals: queue.Queue[tuple[float, RawEvent]] = queue.Queue()
        self._follower = fleet.follower(execution_id, poll_interval_s=0.2)
        self._thread = threading.Thread(target=self._run, name="bench-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for ev in self._follower:
            self.arrivals.put((time.monotonic(), ev))

    def wait_event(self, name: str, timeout_s: float = 30.0) -> tuple[float, RawEvent]:
        """The first `name` event from now on, and when it arrived."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {name} for {self.execution_id} within {timeout_s:g} s")
            try:
                at, ev = self.arrivals.get(timeout=remaining)
            except queue.Empty:
                continue
            if ev.event == name:
                return at, ev

    def close(self) -> None:
        self._follower.stop()
        self._thread.join(timeout=2)


@contextlib.contextmanager
def watching(fleet: Fleet, execution_id: str) -> Iterator[EventWatch]:
    watch = fleet.watch(execution_id)
    try:
        yield watch
    finally:
        watch.close()
