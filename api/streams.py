"""The stream routes: SSE per execution and for all executions, and the WebSocket."""

from __future__ import annotations

from typing import Annotated, Any

import redis
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response, WebSocket
from fastapi.responses import JSONResponse

from api.access import admit_for, check_scope, forbid_unless, required_role, rule_key
from api.auth import ALL, AuthError, Grant, Role
from api.limits import TooManyStreams, client_address
from api.routes import ERRORS, NOT_FOUND, RelayDep, bearer_scheme, get_relay
from api.sse import EventStreamResponse
from api.ws import WsSession
from events.db.errors import DatabaseUnavailableError
from events.errors import InvalidRequestError, UnknownExecutionError

TicketQuery = Annotated[
    str | None, Query(description="a stream ticket from POST /api/stream-tickets")
]


def _grant(request: Request, target: str) -> Grant:
    grant: Grant = request.state.grant
    if not grant.allows(target):
        which = "every execution" if target == ALL else target
        raise HTTPException(403, f"this stream ticket is for {grant.scope}, not for {which}")
    return grant


SSE_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
        "description": "`id: <seq>`, `event: <name>`, `data: <envelope>` per event",
    }
}

# api.access.authorize authenticates these by the header or `?ticket=` (declared here for the
# OpenAPI document) and keeps the grant in `request.state.grant`.
streams = APIRouter(prefix="/api", dependencies=[Depends(bearer_scheme)], responses=ERRORS)


def _resume_point(last_event_id: str | None, after: int | None) -> int:
    if last_event_id is not None and last_event_id.strip() != "":
        try:
            value = int(last_event_id.strip())
        except ValueError:
            value = -1
        if value < 0:
            raise InvalidRequestError("Last-Event-ID", "must be a non-negative integer")
        return value  # the header wins: EventSource sends it on every reconnect
    return after or 0


@streams.get(
    "/executions/{execution_id}/events",
    status_code=200,
    response_class=EventStreamResponse,
    responses={
        **SSE_DOC,
        **NOT_FOUND,
        204: {"description": "the execution ended at or before the resume point"},
    },
)
async def execution_events(
    execution_id: str,
    relay: RelayDep,
    request: Request,
    after: Annotated[int | None, Query(ge=0, description="resume after this id")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ticket: TicketQuery = None,
) -> Response:
    """History after the resume point, then live; ends after execution_complete."""
    grant = _grant(request, execution_id)
    start = _resume_point(last_event_id, after)
    state = await relay.store.stream_state(execution_id)
    if state is None:
        raise UnknownExecutionError(execution_id)
    await check_scope(relay, grant.identity, execution_id)
    if state.complete_id is not None and start >= state.complete_id:
        # 204 tells EventSource not to reconnect: there is nothing more to come.
        return Response(status_code=204)
    feed = relay.execution_feed(execution_id, start)
    return EventStreamResponse(relay, feed, grant, client_address(request.scope))


@streams.get("/events", status_code=200, response_class=EventStreamResponse, responses=SSE_DOC)
async def all_events(relay: RelayDep, request: Request, ticket: TicketQuery = None) -> Response:
    """Every event of every execution, live (no replay)."""
    grant = _grant(request, ALL)
    feed = relay.all_feed(admit_for(relay, grant.identity))
    return EventStreamResponse(relay, feed, grant, client_address(request.scope))


ws_router = APIRouter()
WS_ROLE = required_role(rule_key("WEBSOCKET", "/api/ws")) or Role.VIEWER


@ws_router.websocket("/api/ws")
async def websocket_stream(
    websocket: WebSocket, token: str | None = None, ticket: str | None = None
) -> None:
    """Auth by `Authorization` header, `?token=` or `?ticket=`, checked before the accept."""
    relay = get_relay(websocket)
    try:
        grant = await relay.auth.check_stream(websocket.headers.get("authorization"), ticket, token)
        forbid_unless(grant.identity, WS_ROLE)
    except AuthError as e:
        await _deny(websocket, 401, e.detail)
        return
    except HTTPException as e:
        await _deny(websocket, e.status_code, str(e.detail))
        return
    except (redis.RedisError, OSError):
        await _deny(websocket, 503, "the event store (Redis) is unavailable; retry later")
        return
    except DatabaseUnavailableError as e:
        await _deny(websocket, 503, str(e))
        return
    try:
        with relay.slots.hold(grant.token_id, client_address(websocket.scope)):
            await websocket.accept()
            await WsSession(websocket, relay, grant).run()
    except TooManyStreams as e:
        await _deny(websocket, 429, e.detail)


async def _deny(websocket: WebSocket, status: int, detail: str) -> None:
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        response = JSONResponse({"detail": detail}, status_code=status, headers=headers)
        await websocket.send_denial_response(response)
    else:
        code = {401: 1008, 403: 1008, 429: 1013}.get(status, 1011)
        await websocket.close(code=code, reason=detail[:120])
