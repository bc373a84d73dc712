"""The REST routes (CONTRACT §3), the stream tickets, /metrics and /healthz."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, cast

import orjson
from fastapi import APIRouter, Body, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.security import HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection

from api import health, metrics
from api.access import IdentityDep, check_queues, check_scope, may_see
from api.auth import ALL
from api.dispatch import start_saved
from api.relay import Relay
from api.schemas import (
    CancelResponse,
    ErrorBody,
    Health,
    PlaybookRequest,
    RerunRequest,
    SubmitRequest,
    SubmitResponse,
    TicketRequest,
    TicketResponse,
    WhoAmI,
    WorkerHost,
)
from events.db.errors import needs_database
from events.db.playbooks import PlaybookStore, SavedPlaybook
from events.db.query import DEFAULT_LIMIT, MAX_LIMIT
from events.db.search import NEXT_CURSOR, SearchFilter, cursor_key
from events.errors import UnknownExecutionError
from events.notifications import Attempt
from events.records import ExecutionRecord
from events.requests import Params, PlaybookSource

bearer_scheme = HTTPBearer(
    auto_error=False, description="A token of CLOUDOPS_API_TOKENS: `Authorization: Bearer <token>`"
)


def get_relay(conn: HTTPConnection) -> Relay:
    return cast(Relay, conn.app.state.relay)


RelayDep = Annotated[Relay, Depends(get_relay)]


def store_of(relay: Relay) -> PlaybookStore:
    """The saved playbooks; NoDatabaseError (a 503 naming the database) without one."""
    return needs_database(relay.playbooks)


# Errors are JSON on every route, text and event-stream routes included.
_ERROR_JSON = {"application/json": {"schema": ErrorBody.model_json_schema()}}


def error_doc(description: str) -> dict[str, Any]:
    return {"description": description, "content": _ERROR_JSON}


ERRORS: dict[int | str, dict[str, Any]] = {
    401: error_doc("missing or invalid token"),
    403: error_doc("the token lacks the role this needs (the detail names it)"),
    422: error_doc("bad input; the detail names the field"),
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: error_doc("unknown execution")}

# Every route's role is checked by api.access.authorize, in front of the whole app; the bearer
# scheme here only describes the header in the OpenAPI document.
api = APIRouter(prefix="/api", dependencies=[Depends(bearer_scheme)], responses=ERRORS)


@api.post(
    "/executions",
    status_code=202,
    response_model=SubmitResponse,
    responses={503: error_doc("the broker, or for playbookName the database, is unavailable")},
)
async def submit_execution(
    body: SubmitRequest, relay: RelayDep, response: Response, identity: IdentityDep
) -> Any:
    """Start a command (`aws_cli`, `script`) or a playbook; returns its execution id. A token
    limited to queues may start only what runs on them (403 naming the queue)."""
    dispatcher = relay.dispatcher
    body.check()
    scoped = identity.queues is not None

    async def start_playbook(playbook: PlaybookSource, params: Params = None) -> str:
        if scoped:
            queues = await run_in_threadpool(dispatcher.playbook_queues, playbook, params)
            check_queues(identity, queues)
        submit = partial(dispatcher.submit_playbook, submitted_by=identity.name)
        return await run_in_threadpool(submit, playbook, params)

    if isinstance(body, PlaybookRequest) and body.playbook_name is not None:
        params = body.param_strings()

        def in_scope(saved: SavedPlaybook) -> None:
            queues = dispatcher.playbook_queues(saved.yaml, params, source=saved.source)
            check_queues(identity, queues)

        start = partial(
            start_saved,
            version=body.version,
            submitted_by=identity.name,
            check=in_scope if scoped else None,
        )
        execution_id = await run_in_threadpool(
            start, dispatcher, store_of(relay), body.playbook_name, params
        )
    elif isinstance(body, PlaybookRequest):
        execution_id = await start_playbook(body.playbook, body.param_strings())
    elif (adhoc := body.as_playbook()) is not None:
        execution_id = await start_playbook(adhoc)
    else:
        check_queues(identity, frozenset({relay.settings.default_queue}))
        options = body.options.to_options() if body.options is not None else None
        execution_id = await run_in_threadpool(
            partial(dispatcher.submit_command, options=options, submitted_by=identity.name),
            body.command,
            body.command_type,
        )
    response.headers["Location"] = f"/api/executions/{execution_id}"
    return SubmitResponse(execution_id=execution_id)


@api.get(
    "/executions",
    response_model=list[ExecutionRecord],
    response_model_exclude_none=True,
    responses={200: {"headers": {NEXT_CURSOR: {"description": "the next page's `cursor`"}}}},
)
async def list_executions(
    relay: RelayDep,
    request: Request,
    identity: IdentityDep,
    status: str | None = None,
    command_type: Annotated[str | None, Query(alias="commandType")] = None,
    q: Annotated[
        str | None, Query(max_length=500, description="substring of the command or playbook")
    ] = None,
    host: Annotated[str | None, Query(max_length=500)] = None,
    submitted_by: Annotated[str | None, Query(alias="submittedBy", max_length=500)] = None,
    since: Annotated[str | None, Query(description="RFC 3339, queued at or after")] = None,
    until: Annotated[str | None, Query(description="RFC 3339, queued before")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
) -> Response:
    """Executions newest first, filtered (CONTRACT §8); running ones included. When more
    match, the `X-Next-Cursor` header holds the `cursor` of the next page."""
    # The filters are declared above for their checks (length) and the schema; SearchFilter
    # reads them from the query string, by the names it writes them under for `ls --remote`.
    filt = SearchFilter.from_query(request.query_params)
    records, next_cursor = await relay.store.search(filt, limit, cursor_key(cursor), cursor)
    if identity.queues is not None:
        # A queue-scoped token's page holds only its executions (a page may come out short).
        records = [r for r in records if await may_see(relay, identity, r["executionId"])]
    headers = {NEXT_CURSOR: next_cursor} if next_cursor else {}
    return Response(orjson.dumps(records), media_type="application/json", headers=headers)


@api.get(
    "/executions/{execution_id}",
    response_model=ExecutionRecord,
    response_model_exclude_none=True,
    responses=NOT_FOUND,
)
async def get_execution(execution_id: str, relay: RelayDep, identity: IdentityDep) -> Any:
    await check_scope(relay, identity, execution_id)
    record = await relay.store.record(execution_id)
    if record is None:
        raise UnknownExecutionError(execution_id)
    return record


@api.get(
    "/executions/{execution_id}/output",
    response_class=PlainTextResponse,
    responses={**NOT_FOUND, 200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def get_output(
    execution_id: str,
    relay: RelayDep,
    identity: IdentityDep,
    host: Annotated[str | None, Query(description="only this host's output")] = None,
    step: Annotated[str | None, Query(description="only this step's output (its id)")] = None,
) -> Response:
    """The output so far: every execution_output chunk, in order, as plain text; with `host`
    and `step`, only the chunks of that host (of a fan-out step) and that step."""
    await check_scope(relay, identity, execution_id)
    if await relay.store.stream_state(execution_id) is None:
        raise UnknownExecutionError(execution_id)
    return StreamingResponse(
        relay.store.output(execution_id, host=host, step=step),
        media_type="text/plain; charset=utf-8",
    )


@api.get(
    "/executions/{execution_id}/notifications",
    response_model=list[Attempt],
    responses=NOT_FOUND,
)
async def get_notifications(execution_id: str, relay: RelayDep, identity: IdentityDep) -> Any:
    """Each attempt at delivering the execution's webhook notifications (CONTRACT §10), oldest
    first; the webhooks' query strings are masked."""
    await check_scope(relay, identity, execution_id)
    if await relay.store.record(execution_id) is None:
        raise UnknownExecutionError(execution_id)
    return [a.wire() for a in await relay.store.notifications(execution_id)]


@api.post(
    "/executions/{execution_id}/cancel",
    status_code=202,
    response_model=CancelResponse,
    responses={**NOT_FOUND, 409: error_doc("already ended")},
)
async def cancel_execution(execution_id: str, relay: RelayDep, identity: IdentityDep) -> Any:
    await check_scope(relay, identity, execution_id)
    await run_in_threadpool(
        partial(relay.dispatcher.cancel, cancelled_by=identity.name), execution_id
    )
    return CancelResponse(execution_id=execution_id)


@api.post(
    "/executions/{execution_id}/rerun",
    status_code=202,
    response_model=SubmitResponse,
    responses={**NOT_FOUND, 409: error_doc("still queued or running, or nothing to rerun")},
)
async def rerun_execution(
    execution_id: str,
    relay: RelayDep,
    response: Response,
    identity: IdentityDep,
    body: Annotated[RerunRequest | None, Body()] = None,
) -> Any:
    """Start a new execution of what of this ended one did not succeed (CONTRACT §7): from its
    first step that did not succeed, on that step's hosts that did not (`hosts: failed`, the
    default) or on all of them (`all`); its record names `rerunOf`."""
    await check_scope(relay, identity, execution_id)
    source = await relay.store.rerun_source(execution_id)
    if source is None:
        raise UnknownExecutionError(execution_id)
    asked = body or RerunRequest()
    rerun = partial(relay.dispatcher.rerun, submitted_by=identity.name)
    new_id = await run_in_threadpool(rerun, source, asked.hosts, asked.params)
    response.headers["Location"] = f"/api/executions/{new_id}"
    return SubmitResponse(execution_id=new_id)


@api.get("/workers", response_model=list[WorkerHost])
async def list_workers(relay: RelayDep) -> Response:
    """Every worker seen within a day, sorted by hostname; `online` while it was seen within
    10 s (CONTRACT §7)."""
    return Response(orjson.dumps(await relay.store.hosts()), media_type="application/json")


@api.post(
    "/stream-tickets",
    status_code=201,
    response_model=TicketResponse,
    responses=NOT_FOUND,
)
async def create_stream_ticket(
    body: TicketRequest, relay: RelayDep, response: Response, identity: IdentityDep
) -> Any:
    """A short-lived, single-use ticket for `?ticket=` on the SSE and WebSocket routes (browsers'
    EventSource and WebSocket cannot send an Authorization header), bound to one execution, or
    to every execution with `"*"`."""
    scope = body.execution_id
    if scope != ALL and await relay.store.stream_state(scope) is None:
        raise UnknownExecutionError(scope)
    if scope != ALL:
        await check_scope(relay, identity, scope)
    ticket = await relay.auth.issue_ticket(identity, scope)
    # A ticket is a credential: no cache, no proxy may keep it.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return TicketResponse(ticket=ticket, expires_in_s=relay.auth.ticket_ttl_s)


ops = APIRouter()


@api.get("/whoami", response_model=WhoAmI, response_model_exclude_none=True)
async def whoami(identity: IdentityDep) -> Any:
    """The token's name, role and queue scope (for the console to show and to hide what the
    role may not do)."""
    queues = None if identity.queues is None else sorted(identity.queues)
    return WhoAmI(name=identity.name, role=identity.role, queues=queues)


@ops.get(
    "/metrics",
    dependencies=[Depends(bearer_scheme)],
    response_class=PlainTextResponse,
    responses={401: ERRORS[401], 403: ERRORS[403]},
)
async def get_metrics(relay: RelayDep) -> Response:
    """Prometheus text format."""
    return Response(await relay.metrics.render(relay), media_type=metrics.CONTENT_TYPE)


@ops.get("/healthz", response_model=Health, response_model_exclude_none=True)
async def healthz(relay: RelayDep) -> Any:
    """Liveness: 200 when Redis and the broker answer, 503 naming each that does not. No
    token, no data."""
    down = await health.unavailable(relay.store, relay.checks)
    if down:
        detail = "; ".join(f"{name} does not answer" for name in down)
        body = Health(status="unavailable", detail=detail, unavailable=down)
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
    return Health(status="ok")
