"""Build the relay's ASGI app: `create_app(settings, dispatcher)`.

    uvicorn --factory mymodule:make_app    # where make_app() returns create_app(...)

Redis is required (the relay only bridges it). Long-lived streams never end by themselves: run
uvicorn with `timeout_graceful_shutdown` (a few seconds) so that a restart does not wait on them.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from api import errors
from api.auth import install_log_redaction
from api.options import RelayOptions
from api.relay import Relay
from api.routes import api, ops
from api.streams import streams, ws_router
from events.errors import ConfigError
from events.settings import Settings
from worker.dispatch import Dispatcher
from worker.reaper import start_reaper
from worker.runtime import Runtime

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"


def create_app(
    settings: Settings,
    dispatcher: Dispatcher,
    *,
    redis_url: str | None = None,
    options: RelayOptions | None = None,
) -> FastAPI:
    url = redis_url or settings.redis_url
    if url is None:
        raise ConfigError("the relay needs Redis: set CLOUDOPS_REDIS_URL")
    opts = options or RelayOptions()
    install_log_redaction()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        relay = await Relay.start(settings, dispatcher, url, opts)
        app.state.relay = relay
        # The relay also ends executions whose worker is gone (expired lease), so that they
        # end even when no worker is left to notice. It only reads and publishes: it never
        # signals a process (hostname None: no execution is local to the relay).
        reaper = Runtime.build(settings.with_(redis_url=url))
        stop_reaper = start_reaper(reaper, None)
        try:
            yield
        finally:
            stop_reaper.set()
            reaper.publisher.close(timeout_s=2)
            await relay.stop()

    app = FastAPI(
        title="cloudops-execution-engine relay",
        version="0.1.0",
        description="Submit, follow and cancel executions; streams as SSE and WebSocket.",
        lifespan=lifespan,
    )
    errors.install(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            max_age=600,
        )
    app.include_router(api)
    app.include_router(streams)
    app.include_router(ws_router)
    app.include_router(ops)
    _static(app)
    return app


_PLACEHOLDER = (
    "<!doctype html><meta charset=utf-8><title>cloudops</title>"
    "<p>cloudops relay: the console is not installed. API: <a href=/docs>/docs</a>.</p>"
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
