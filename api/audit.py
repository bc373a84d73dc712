"""The audit log's relay side (CONTRACT §9): what is recorded, and its writer
(`GET /api/audit` is api/audit_routes.py).

One ASGI middleware, outside everything that can refuse a request, records every request to an
audited route (start, cancel, rerun, token create and revoke: AUDITED) and every 401 and 403 of
any route, WebSocket handshakes included, with the caller (api.access keeps its identity in
the request's state), the target (the path's execution or token, or the new execution's id
from `Location`), the outcome and the client address (uvicorn's: a trusted proxy's
`X-Forwarded-For` only, FORWARDED_ALLOW_IPS). Entries are written by a background task in
batches (`AuditWriter`): a flood of refused requests costs the database one insert per batch,
and a request never waits for the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.limits import client_address
from events.db.audit import AuditEntry, AuditLog
from events.db.errors import DatabaseUnavailableError

log = logging.getLogger(__name__)

# "METHOD path" of a route -> the action it is recorded as, whatever its outcome.
AUDITED = {
    "POST /api/executions": "start",
    "POST /api/executions/{execution_id}/cancel": "cancel",
    "POST /api/executions/{execution_id}/rerun": "rerun",
    "POST /api/tokens": "token.create",
    "DELETE /api/tokens/{name}": "token.revoke",
}
ANONYMOUS = "anonymous"
_OUTCOMES = {401: "unauthenticated", 403: "denied"}


def outcome_of(status: int) -> str:
    return _OUTCOMES.get(status, "ok" if status < 400 else "failed")


class AuditWriter:
    """Entries queued by requests, written in batches by one task; past `bound` waiting
    (the database is away), new ones are dropped and counted."""

    def __init__(self, audit: AuditLog, bound: int = 10_000) -> None:
        self.log = audit
        self._bound = bound
        self._waiting: list[AuditEntry] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def add(self, entry: AuditEntry) -> None:
        if len(self._waiting) >= self._bound:
            self.dropped += 1
            return
        self._waiting.append(entry)
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._write()  # what is left

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._write()

    async def _write(self) -> None:
        batch, self._waiting = self._waiting, []
        if not batch:
            return
        try:
            await asyncio.to_thread(self.log.write, batch)
        except DatabaseUnavailableError as e:
            self.dropped += len(batch)
            log.warning("%d audit entries not written: %s", len(batch), e)


def _target(scope: Scope, location: str | None) -> str | None:
    params = scope.get("path_params") or {}
    for key in ("execution_id", "name"):
        if key in params:
            return str(params[key])
    return location.rstrip("/").rsplit("/", 1)[-1].split("?")[0] if location else None


class AuditMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        seen: dict[str, Any] = {}

        async def watch(message: Message) -> None:
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start"):
                seen["status"] = message["status"]
                for k, v in message.get("headers", ()):
                    if k.lower() == b"location":
                        seen["location"] = v.decode("latin-1")
            elif kind == "websocket.accept":
                seen["status"] = 101
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if "status" in seen:
                self._record(scope, int(seen["status"]), seen.get("location"))

    def _record(self, scope: Scope, status: int, location: str | None) -> None:
        relay = getattr(getattr(scope.get("app"), "state", None), "relay", None)
        writer = getattr(relay, "audit", None)
        if writer is None:
            return
        method = "WEBSOCKET" if scope["type"] == "websocket" else scope["method"]
        path = getattr(scope.get("route"), "path", None) or scope.get("path", "")
        key = f"{method} {path}"
        action = AUDITED.get(key)
        if action is None and status not in _OUTCOMES:
            return
        identity = (scope.get("state") or {}).get("identity")
        writer.add(
            AuditEntry(
                at=datetime.now(UTC),
                actor=getattr(identity, "name", ANONYMOUS),
                action=action or key,
                target=_target(scope, location),
                outcome=outcome_of(status),
                status=status,
                client=client_address(scope),
            )
        )
