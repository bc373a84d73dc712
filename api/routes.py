"""The REST routes (CONTRACT §3), the stream tickets, /metrics and /healthz."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, cast

import redis
from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from api import metrics
from api.relay import Relay
from api.schemas import (
    CancelResponse,
    ErrorBody,
    ExecutionList,
    Health,
    PlaybookRequest,
    SubmitRequest,
    SubmitResponse,
    TicketResponse,
)
from events.errors import UnknownExecutionError
from events.models import Status
from events.records import ExecutionRecord

bearer_scheme = HTTPBearer(
    auto_error=False, description="A token of CLOUDOPS_API_TOKENS: `Authorization: Bearer <token>`"
)


def get_relay(conn: HTTPConnection) -> Relay:
    return cast(Relay, conn.app.state.relay)


RelayDep = Annotated[Relay, Depends(get_relay)]


async def require_token(
    relay: RelayDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> None:
    relay.auth.check_token(creds.credentials if creds is not None else None)


# Errors are JSON on every route, text and event-stream routes included.
_ERROR_JSON = {"application/json": {"schema": ErrorBody.model_json_schema()}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _ERROR_JSON}


ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error("missing or invalid token"),
    422: _error("bad input; the detail names the field"),
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: _error("unknown execution")}

api = APIRouter(prefix="/api", dependencies=[Depends(require_token)], responses=ERRORS)


@api.post("/executions", status_code=202, response_model=SubmitResponse)
async def submit_execution(body: SubmitRequest, relay: RelayDep, response: Response) -> Any:
    """Start a command (`aws_cli`, `script`) or a playbook; returns its execution id."""
    dispatcher = relay.dispatcher
    body.check()
    if isinstance(body, PlaybookRequest):
        execution_id = await run_in_threadpool(
            dispatcher.submit_playbook, body.playbook, body.param_strings()
        )
    else:
        options = body.options.to_options() if body.options is not None else None
        execution_id = await run_in_threadpool(
            dispatcher.submit_command, body.command, body.command_type, options
        )
    response.headers["Location"] = f"/api/executions/{execution_id}"
    return SubmitResponse(execution_id=execution_id)


@api.get("/executions", response_model=ExecutionList, response_model_exclude_none=True)
async def list_executions(
    relay: RelayDep,
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Any:
    """Recent executions, newest first."""
    records = await relay.store.recent(status=None if status is None else status.value, limit=limit)
    return ExecutionList(executions=records)


@api.get(
    "/executions/{execution_id}",
    response_model=ExecutionRecord,
    response_model_exclude_none=True,
    responses=NOT_FOUND,
)
async def get_execution(execution_id: str, relay: RelayDep) -> Any:
    record = await relay.store.record(execution_id)
    if record is None:
        raise UnknownExecutionError(execution_id)
    return record


@api.get(
    "/executions/{execution_id}/output",
    response_class=PlainTextResponse,
    responses={**NOT_FOUND, 200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def get_output(execution_id: str, relay: RelayDep) -> Response:
    """The output so far: every execution_output chunk, in order, as plain text."""
    if await relay.store.stream_state(execution_id) is None:
        raise UnknownExecutionError(execution_id)
    return StreamingResponse(
        relay.store.output(execution_id), media_type="text/plain; charset=utf-8"
    )


@api.post(
    "/executions/{execution_id}/cancel",
    status_code=202,
    response_model=CancelResponse,
    responses={**NOT_FOUND, 409: _error("already ended")},
)
async def cancel_execution(execution_id: str, relay: RelayDep) -> Any:
    await run_in_threadpool(relay.dispatcher.cancel, execution_id)
    return CancelResponse(execution_id=execution_id)


@api.post("/stream-tickets", status_code=201, response_model=TicketResponse)
async def create_stream_ticket(relay: RelayDep) -> Any:
    """A short-lived ticket for `?ticket=` on the SSE and WebSocket routes (browsers'
    EventSource and WebSocket cannot send an Authorization header)."""
    ticket = await relay.auth.issue_ticket()
    return TicketResponse(ticket=ticket, expires_in_s=relay.auth.ticket_ttl_s)


ops = APIRouter()


@ops.get(
    "/metrics",
    dependencies=[Depends(require_token)],
    response_class=PlainTextResponse,
    responses={401: ERRORS[401]},
)
async def get_metrics(relay: RelayDep) -> Response:
    """Prometheus text format."""
    return PlainTextResponse(await metrics.render(relay), media_type=metrics.CONTENT_TYPE)


@ops.get("/healthz", response_model=Health, response_model_exclude_none=True)
async def healthz(relay: RelayDep) -> Any:
    """Liveness: answers 200 when Redis answers, 503 otherwise. No token, no data."""
    try:
        async with asyncio.timeout(2.0):
            await relay.store.ping()
    except (redis.RedisError, OSError, TimeoutError):
        body = Health(status="unavailable", detail="Redis does not answer")
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
    return Health(status="ok")
