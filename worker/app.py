"""The Celery application, configured from the one Settings object."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from celery import Celery

from events.settings import Settings
from worker.reserve import ReserveOne

app = Celery("cloudops", set_as_current=False)
_settings: Settings | None = None

_NOT_LOGGED = "[arguments not logged]"


class HideTaskArguments(logging.Filter):
    """At DEBUG Celery's pool logs every task it applies with the raw message (celery/
    concurrency/base.py, `TaskPool: Apply`), secret params included; `kwargsrepr` does not
    cover that line. Only Celery's truncation at 1,024 characters kept them out so far."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            isinstance(record.msg, str)
            and record.msg.startswith("TaskPool: Apply")
            and isinstance(record.args, tuple)
            and record.args
        ):
            record.args = (record.args[0], _NOT_LOGGED, _NOT_LOGGED)
        return True


logging.getLogger("celery.pool").addFilter(HideTaskArguments())


def broker_key_prefix(settings: Settings) -> str:
    """Celery's own keys (queues, bindings, pidbox) live under this prefix, apart from ours."""
    return f"{settings.key_prefix}:celery:"


def _scheme(url: str | None) -> str:
    return "" if url is None else url.split("://", 1)[0]


def is_sentinel_url(url: str | None) -> bool:
    return _scheme(url) == "sentinel"


def is_redis_url(url: str | None) -> bool:
    """A broker on Redis (directly or through Sentinel), as opposed to AMQP (RabbitMQ)."""
    return _scheme(url) in ("redis", "rediss", "unix", "sentinel")


def broker_name(url: str | None) -> str:
    """How an error names the broker: what it is, never its URL (it may hold a password)."""
    return "Redis" if is_redis_url(url) else "RabbitMQ"


def broker_url(settings: Settings) -> str | None:
    """Celery's broker URL: CLOUDOPS_BROKER_URL, or the events' Redis (through the sentinels
    when they are configured: kombu's sentinel transport takes each sentinel as an alternate
    `sentinel://` URL, the master's password and database from CLOUDOPS_REDIS_URL)."""
    if not settings.broker_on_sentinel:
        return settings.effective_broker_url
    auth, db = "", "0"
    if settings.redis_url is not None:
        parts = urlsplit(settings.redis_url)
        if parts.password is not None:
            auth = f"{parts.username or ''}:{parts.password}@"
        db = parts.path.strip("/") or "0"
    return ";".join(f"sentinel://{auth}{hp}/{db}" for hp in settings.redis_sentinels)


# Priorities (worker.taskqueue): kombu's Redis transport pops priority 0 first, AMQP the
# highest number first, and only from queues declared with `x-max-priority`.
AMQP_MAX_PRIORITY = 9


def priorities(url: str | None) -> tuple[int, int]:
    """(work that goes on: commands and the next step of a started run, a run's first step):
    the highest and the lowest priority of the broker, so that started runs drain first."""
    return (0, 9) if is_redis_url(url) else (AMQP_MAX_PRIORITY, 0)


def _broker_options(settings: Settings, broker: str | None) -> dict[str, Any]:
    """Transport and timeouts of the broker. Every wait on it is bounded: a submission to a
    dead broker fails (503) within a few seconds, a worker reconnects by itself, forever."""
    timeout_s = settings.broker_timeout_s
    conf: dict[str, Any] = {
        "broker_connection_timeout": timeout_s,
        # Two tries of `timeout_s` each at most: a dead broker is reported well within 10 s.
        "task_publish_retry_policy": {
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        # A worker that lost its broker keeps its running commands and reconnects, however long
        # the broker is away (Celery's default gives up after 100 tries).
        "broker_connection_max_retries": None,
    }
    if not is_redis_url(broker):
        return conf | {
            # RabbitMQ: queues declared with x-max-priority, so that priorities apply there.
            "task_queue_max_priority": AMQP_MAX_PRIORITY,
            # One task in reserve (worker/reserve.py), also after a reconnection: Celery would
            # otherwise raise the window back to `concurrency` step by step.
            "worker_enable_prefetch_count_reduction": False,
            # A task counts as sent once the broker confirmed it: without confirms a publish
            # onto a connection the broker has just reset "succeeds" and the task is lost.
            "broker_transport_options": {"confirm_publish": True},
        }
    options: dict[str, Any] = {
        "global_keyprefix": broker_key_prefix(settings),
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
    }
    if is_sentinel_url(broker):
        sentinel_kwargs: dict[str, Any] = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
        if settings.redis_sentinel_password:
            sentinel_kwargs["password"] = settings.redis_sentinel_password
        options |= {
            "master_name": settings.redis_sentinel_master,
            "sentinel_kwargs": sentinel_kwargs,
        }
    # kombu's Redis transport (or its Sentinel flavour), but a queue item that is not a message
    # is dropped instead of shutting the worker down (worker/transport.py). Only for a Redis
    # broker: forcing it onto an amqp:// URL made the worker speak Redis to RabbitMQ.
    transport = "SentinelTransport" if is_sentinel_url(broker) else "Transport"
    return conf | {
        "broker_transport": f"worker.transport:{transport}",
        "broker_transport_options": options,
        # Take a task only when a pool process is free (see below); Celery applies it to Redis
        # brokers only and warns on others.
        "worker_disable_prefetch": True,
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    broker = broker_url(settings)
    conf: dict[str, Any] = {"broker_url": broker} | _broker_options(settings, broker)
    return conf | {
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.default_queue,
        # Each worker also consumes its own queue, `<hostname>.dq`: a fan-out step sends each
        # host's run there (worker.taskqueue.CeleryQueue.send_hosts), to that very worker.
        "worker_direct": True,
        # Results travel as events; nothing reads Celery's result backend.
        "task_ignore_result": True,
        "result_backend": None,
        # A command is never run twice: ack on receipt (no redelivery after visibility_timeout,
        # celery #5935), never re-queue on a lost worker; our lease detects lost executions.
        "task_acks_late": False,
        "task_reject_on_worker_lost": False,
        "worker_prefetch_multiplier": 1,
        # With early acks, prefetch counts only unacked messages: a worker whose pool is busy
        # still reserves up to `concurrency` more tasks, which then wait for its slots while
        # another worker idles, and are lost (unacked, restored only after visibility_timeout,
        # an hour) if it is killed. On Redis `worker_disable_prefetch` (above) takes a task
        # only when a pool process is free; RabbitMQ gives a killed worker's unacked tasks
        # back at once.
        # Flower: task events from workers, and `task-sent` so queued tasks are visible.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "include": ["worker.tasks"],
        "enable_utc": True,
    }


def client_app(settings: Settings) -> Celery:
    """A Celery app of its own for a submitting process (relay, CLI, tests): the global `app`
    caches its broker connection, so each Settings gets its own instance."""
    client = Celery("cloudops-client", set_as_current=False)
    conf = celery_config(settings)
    conf.pop("include")
    client.conf.update(conf)
    return client


def configure(settings: Settings) -> Celery:
    """Point the app at the settings' broker. Called once per process, before any task runs."""
    global _settings
    _settings = settings
    app.conf.update(celery_config(settings))
    app.steps["consumer"].add(ReserveOne)
    return app


def current_settings() -> Settings:
    """The settings the app was configured with (read from the environment if it was not)."""
    global _settings
    if _settings is None:
        configure(Settings.from_env())
    assert _settings is not None
    return _settings
