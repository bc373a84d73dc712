"""The relay as `cloudops relay` runs it: the app, its dispatcher, its reaper and, with a
history database, its archiver and daily prune (cli.history)."""

from __future__ import annotations

from fastapi import FastAPI

from api.app import create_app
from api.dispatch import Service
from api.options import RelayOptions
from cli.history import relay_service
from cli.wiring import ReaperService, local
from events.settings import Settings
from worker.taskqueue import CeleryQueue


def relay_app(settings: Settings, options: RelayOptions | None = None) -> FastAPI:
    """A fleet's relay (the settings' Redis), or with no Redis the whole product embedded."""
    parts = local(settings)
    tasks = parts.dispatcher.tasks
    services: list[Service] = [ReaperService(parts.runtime, tasks)]
    archiving = relay_service(parts.runtime, parts.engine)
    if archiving is not None:
        services.append(archiving)
    if parts.presence is not None:
        services.append(parts.presence)
    return create_app(
        settings,
        parts.dispatcher,
        clients=parts.relay_clients(),
        options=options,
        services=services,
        history=parts.history,
        playbooks=parts.playbooks,
        schedules=parts.schedules,
        tokens=parts.tokens,
        audit=parts.audit,
        # /healthz names the broker when it does not answer (embedded mode has none).
        checks=[tasks] if isinstance(tasks, CeleryQueue) else [],
    )
