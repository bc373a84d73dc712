"""The relay as the tests run it: `uvicorn --factory tests.relay.launcher:make_app`.

Settings come from the CLOUDOPS_* environment as in production; the relay's own knobs and
the dispatcher from RELAY_TEST_* variables (test-only).
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from api.app import create_app
from api.options import RelayOptions
from events.settings import Settings
from tests.relay.fake_dispatch import FakeDispatcher
from worker.dispatch import Dispatcher


def make_app() -> FastAPI:
    env = os.environ
    settings = Settings.from_env()
    options = RelayOptions(
        stall_limit_s=float(env.get("RELAY_TEST_STALL_LIMIT_S", "30")),
        idle_refill_s=float(env.get("RELAY_TEST_IDLE_REFILL_S", "1")),
    )
    dispatcher: Dispatcher
    if env.get("RELAY_TEST_DISPATCHER") == "celery":
        from worker.celery_dispatch import CeleryDispatcher

        dispatcher = CeleryDispatcher(settings)
    else:
        dispatcher = FakeDispatcher(settings)
    return create_app(settings, dispatcher, options=options)
