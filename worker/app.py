"""The Celery application, configured from the one Settings object."""

from __future__ import annotations

from typing import Any

from celery import Celery

from events.settings import Settings

app = Celery("cloudops", set_as_current=False)
_settings: Settings | None = None

TASK_RUN_COMMAND = "cloudops.run_command"
TASK_RUN_STEP = "cloudops.run_playbook_step"


def broker_key_prefix(settings: Settings) -> str:
    """Celery's own keys (queues, bindings, pidbox) live under this prefix, apart from ours."""
    return f"{settings.key_prefix}:celery:"


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.effective_broker_url,
        # kombu's Redis transport, but a queue item that is not a message is dropped instead of
        # shutting the worker down (worker/transport.py).
        "broker_transport": "worker.transport:Transport",
        "broker_transport_options": {"global_keyprefix": broker_key_prefix(settings)},
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.default_queue,
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
        # an hour) if it is killed. Take a task only when a pool process is free.
        "worker_disable_prefetch": True,
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
    return app


def current_settings() -> Settings:
    """The settings the app was configured with (read from the environment if it was not)."""
    global _settings
    if _settings is None:
        configure(Settings.from_env())
    assert _settings is not None
    return _settings
