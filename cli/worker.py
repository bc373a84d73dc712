"""`cloudops worker`: a Celery worker of this fleet, with its reaper and bounded shutdown; on
start, it kills what lost executions of this host left (worker/leftovers.py) and registers in
the host registry (worker/presence.py), offline from the start of a warm shutdown."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from cli import webhooks
from events.settings import Settings
from worker.app import configure
from worker.leftovers import kill_leftovers
from worker.presence import Presence, celery_running
from worker.reaper import start_reaper, stop_after_grace
from worker.runtime import Runtime
from worker.taskqueue import CeleryQueue


def run_worker(
    settings: Settings,
    *,
    queues: str | None,
    concurrency: int | None,
    hostname: str | None,
    loglevel: str,
    labels: Mapping[str, str] | None = None,
) -> None:
    app = configure(settings)
    webhooks.install()
    # Mingle only syncs revoked ids between workers; our cancel mark in Redis does that job.
    # Gossip makes every worker consume every other worker's events (heartbeats, and each
    # task's received/started/succeeded) for a logical clock and elections nothing here uses:
    # twenty idle workers spent 212 ms of CPU a second on it, 54 without (and Redis 18 -> 8).
    # Flower reads the events itself; the host registry is ours (worker/presence.py).
    argv = ["worker", "-E", "--loglevel", loglevel, "-P", "prefork", "--without-mingle"]
    argv.append("--without-gossip")
    consumed = [q.strip() for q in (queues or settings.default_queue).split(",") if q.strip()]
    argv += ["-Q", ",".join(consumed)]
    if concurrency is not None:
        argv += ["-c", str(concurrency)]
    if hostname:
        argv += ["-n", hostname]

    reaper: dict[str, Any] = {}

    @worker_ready.connect(weak=False)  # type: ignore[untyped-decorator]
    def _start_reaper(sender: Any = None, **_: Any) -> None:
        # Its own Runtime: the reaper thread must share no lock with the pool's forks.
        reaper["hostname"] = getattr(sender, "hostname", None)
        if reaper["hostname"]:
            kill_leftovers(settings.state_dir, settings.key_prefix, reaper["hostname"])
        reaper["runtime"] = Runtime.build(settings)
        tasks = CeleryQueue(app, settings.default_queue)
        start_reaper(reaper["runtime"], tasks, reaper["hostname"])
        if reaper["hostname"]:
            controller = getattr(sender, "controller", None)
            reaper["presence"] = Presence(
                reaper["runtime"].redis,
                reaper["runtime"].keys,
                reaper["hostname"],
                queues=consumed,
                labels=labels or {},
                concurrency=int(getattr(controller, "concurrency", None) or concurrency or 0),
                running=celery_running,
                interval_s=settings.host_refresh_interval_s,
            )
            reaper["presence"].start()

    @worker_shutting_down.connect(weak=False)  # type: ignore[untyped-decorator]
    def _bound_warm_shutdown(**_: Any) -> None:
        if "presence" in reaper:
            reaper["presence"].stopping()
        if "runtime" in reaper:
            stop_after_grace(reaper["runtime"], reaper["hostname"], settings.shutdown_grace_s)

    @worker_shutdown.connect(weak=False)  # type: ignore[untyped-decorator]
    def _offline(**_: Any) -> None:
        if "presence" in reaper:
            reaper["presence"].stop()

    app.worker_main(argv)
