"""Build the relay's ASGI app: `create_app(settings, dispatcher)`.

    uvicorn --factory mymodule:make_app    # where make_app() returns create_app(...)

Redis is required (the relay only bridges it): its URL from the settings, or clients injected
by the composition root (embedded mode's in-process Redis). Long-lived streams never end by
themselves: run uvicorn with `timeout_graceful_shutdown` (a few seconds) so that a restart does
not wait on them.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from api import errors
from api.access import authorize
from api.audit import AuditMiddleware
from api.audit_routes import audit_router
from api.auth import install_log_redaction
from api.dispatch import Dispatcher, HealthCheck, Service
from api.headers import SecurityHeaders
from api.limits import BodyLimit, StreamLimit, nesting_refused
from api.options import RelayOptions
from api.playbooks import playbooks_router
from api.relay import Relay, RelayClients
from api.routes import api, ops
from api.schedules import schedules_router
from api.streams import streams, ws_router
from api.tokens import tokens_router
from events.db.audit import AuditLog
from events.db.playbooks import PlaybookStore
from events.db.query import History
from events.db.schedules import ScheduleStore
from events.db.search import NEXT_CURSOR
from events.db.tokens import TokenStore
from events.errors import ConfigError
from events.settings import Settings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"


def create_app(
    settings: Settings,
    dispatcher: Dispatcher,
    *,
    clients: RelayClients | None = None,
    options: RelayOptions | None = None,
    services: Sequence[Service] = (),
    checks: Sequence[HealthCheck] = (),
    history: History | None = None,
    playbooks: PlaybookStore | None = None,
    schedules: ScheduleStore | None = None,
    tokens: TokenStore | None = None,
    audit: AuditLog | None = None,
) -> FastAPI:
    """The relay. `clients` are its async Redis clients (default: from the settings' Redis);
    `services` run for the relay's lifetime (started after it, stopped before it); `checks`
    are what /healthz checks besides Redis (the broker); `history` the database the relay reads
    an execution from once Redis forgot it; `playbooks` the saved playbooks (in that database:
    without one, their routes answer 503), `schedules` the schedules (likewise);
    `tokens` the named API tokens (same database; without
    one only CLOUDOPS_API_TOKENS exist); `audit` the audit log (same database; without one
    nothing is recorded)."""
    if clients is None and settings.embedded:
        raise ConfigError("the relay needs Redis: set CLOUDOPS_REDIS_URL")
    opts = options or RelayOptions()
    install_log_redaction()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        relay = await Relay.start(settings, dispatcher, opts, clients, history, tokens, audit)
        relay.checks = tuple(checks)
        relay.playbooks = playbooks
        relay.schedules = schedules
        app.state.relay = relay
        started: list[Service] = []
        try:
            for service in services:
                service.start()
                started.append(service)
            # Everything made so far (modules, the app, its routes: some 150,000 objects) lives
            # as long as the process: out of the collector's sight, so that a full collection
            # under load walks only what streams and requests made, not a 70-90 ms pause of
            # every stream (measured by the hostile-load fault test).
            gc.freeze()
            yield
        finally:
            for service in reversed(started):
                service.stop()
            await relay.stop()

    app = FastAPI(
        title="cloudops-execution-engine relay",
        version="0.1.0",
        description="Submit, follow and cancel executions; streams as SSE and WebSocket.",
        lifespan=lifespan,
        # Swagger UI and ReDoc load their code from a public CDN: not on a relay that runs
        # commands. The spec stays at /openapi.json for any viewer you trust.
        docs_url=None,
        redoc_url=None,
        # Every route's role, checked in one place (api.access.RULES).
        dependencies=[Depends(authorize)],
    )
    errors.install(app)
    app.add_exception_handler(RecursionError, nesting_refused)
    # Outermost last: CORS, then the security headers, then the audit, the stream limit and
    # the body limit, then the routes.
    app.add_middleware(BodyLimit, settings=settings)
    # A stream past its bounds is refused before routing (api.limits.StreamLimit).
    app.add_middleware(StreamLimit)
    # Outside the body limit: its 401s before the body is read are audited too.
    app.add_middleware(AuditMiddleware)
    app.add_middleware(SecurityHeaders)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            # A browser's script may read the list's next-page cursor.
            expose_headers=[NEXT_CURSOR],
            max_age=600,
        )
    app.include_router(api)
    app.include_router(playbooks_router)
    app.include_router(schedules_router)
    app.include_router(tokens_router)
    app.include_router(audit_router)
    app.include_router(streams)
    app.include_router(ws_router)
    app.include_router(ops)
    _static(app)
    return app


_PLACEHOLDER = (
    "<!doctype html><meta charset=utf-8><title>cloudops</title>"
    "<p>cloudops relay: the console is not installed. API: <a href=/openapi.json>OpenAPI</a>.</p>"
)


def _static(app: FastAPI) -> None:
    """The console and its files: no token, no data."""

    @app.get("/", include_in_schema=False)
    async def console() -> Response:
        index = STATIC_DIR / "index.html"
        if index.is_file():
            return FileResponse(index, media_type="text/html; charset=utf-8")
        return HTMLResponse(_PLACEHOLDER)

    @app.get("/cloudops-events.js", include_in_schema=False)
    async def events_js() -> Response:
        return FileResponse(
            STATIC_DIR / "cloudops-events.js", media_type="text/javascript; charset=utf-8"
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")
