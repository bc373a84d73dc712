"""The relay as the tests run it: `python -m tests.relay.launcher --port P`, served by
`api.server.serve` (uvicorn with the relay's limits, as `cloudops relay` runs it) with
`make_app` as the factory.

Settings come from the CLOUDOPS_* environment as in production; the relay's own knobs and
the dispatcher from RELAY_TEST_* variables (test-only). `POST /test-only/revoke` with a token
in `{"token": ...}` revokes it in this process: what a token store will do (issue 16), for the
tests of open streams ending on revocation.
"""

from __future__ import annotations

import argparse
import os

from fastapi import FastAPI
from pydantic import BaseModel

from api.access import PUBLIC, RULES
from api.app import create_app
from api.auth import token_id
from api.options import RelayOptions
from api.server import serve
from cli.relay import relay_app
from cli.wiring import ReaperService, fleet
from events.db.playbooks import PlaybookStore
from events.db.schedules import ScheduleStore
from events.settings import Settings
from tests.relay.fake_dispatch import FakeDispatcher


def make_app() -> FastAPI:
    env = os.environ
    settings = Settings.from_env()
    options = RelayOptions(
        stall_limit_s=float(env.get("RELAY_TEST_STALL_LIMIT_S", "30")),
        idle_refill_s=float(env.get("RELAY_TEST_IDLE_REFILL_S", "1")),
    )
    if env.get("RELAY_TEST_DISPATCHER") == "celery":
        app = relay_app(settings, options)  # exactly `cloudops relay`
    else:
        # The scripted dispatcher, with the relay's reaper as `cloudops relay` runs it.
        parts = fleet(settings)
        reaper = ReaperService(parts.runtime, parts.dispatcher.tasks)
        fake = FakeDispatcher(settings)
        # With CLOUDOPS_DATABASE_URL, saved playbooks too (checked by the real loader).
        store = None if parts.engine is None else PlaybookStore(parts.engine, fake.check_playbook)
        schedules = (
            None if store is None or parts.engine is None else ScheduleStore(parts.engine, store)
        )
        app = create_app(
            settings,
            fake,
            options=options,
            services=[reaper],
            playbooks=store,
            schedules=schedules,
            tokens=parts.tokens,
            audit=parts.audit,
        )
    _add_revoke_route(app)
    return app


class _Revoke(BaseModel):
    token: str


def _add_revoke_route(app: FastAPI) -> None:
    # Test-only, so not in the relay's own table (which refuses any route it does not name).
    RULES["POST /test-only/revoke"] = PUBLIC

    @app.post("/test-only/revoke", include_in_schema=False)
    async def revoke(body: _Revoke) -> dict[str, str]:
        app.state.relay.auth.revoke(token_id(body.token))
        return {"revoked": token_id(body.token)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--timeout-graceful-shutdown", type=int, default=2)
    args = parser.parse_args()
    serve(
        "tests.relay.launcher:make_app",
        Settings.from_env(),
        host=args.host,
        port=args.port,
        factory=True,
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
    )


if __name__ == "__main__":
    main()
