"""Schedules (CONTRACT §10): `POST/GET /api/schedules`, `GET/PATCH/DELETE /api/schedules/{id}`.

The relay only writes the definitions (events.db.schedules, in the history database); the
schedulers (`cloudops scheduler`) read them and start the runs. Each schedule listed or read
carries `nextRunAt` (while enabled).
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Response
from starlette.concurrency import run_in_threadpool

from api.access import IdentityDep
from api.relay import Relay
from api.routes import ERRORS, RelayDep, bearer_scheme, error_doc
from api.schemas import ScheduleBody
from events.db.errors import needs_database
from events.db.schedules import ScheduleStore

_UNKNOWN: dict[int | str, dict[str, Any]] = {404: error_doc("unknown schedule")}

schedules_router = APIRouter(
    prefix="/api/schedules",
    # Who may call what: api.access.RULES, checked in front of the app.
    dependencies=[Depends(bearer_scheme)],
    responses={
        **ERRORS,
        503: error_doc("no history database (CLOUDOPS_DATABASE_URL), or it does not answer"),
        403: error_doc("the token lacks the role this needs"),
    },
    tags=["schedules"],
)
# The body is checked by events.schedules.parse_spec (every bad field named at once, the
# cadence rules included); the model documents it.
_BODY = Body(description="playbookName, params, cron + timezone or intervalS, enabled")


def _store(relay: Relay) -> ScheduleStore:
    return needs_database(relay.schedules)


def _json(body: Any, status: int = 200, **headers: str) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


@schedules_router.post("", status_code=201, response_model=ScheduleBody)
async def create_schedule(
    relay: RelayDep,
    identity: IdentityDep,
    body: Annotated[dict[str, Any], _BODY],
) -> Response:
    """Schedule a saved playbook: `cron` (5 fields, in `timezone`, default UTC) or `intervalS`."""
    made = await run_in_threadpool(_store(relay).create, body, identity.name)
    return _json(made.wire(), 201, Location=f"/api/schedules/{made.id}")


@schedules_router.get("", response_model=list[ScheduleBody])
async def list_schedules(relay: RelayDep) -> Response:
    """Every schedule, oldest first, each with its next run time while enabled."""
    rows = await run_in_threadpool(_store(relay).all)
    return _json([s.wire() for s in rows])


@schedules_router.get("/{schedule_id}", response_model=ScheduleBody, responses=_UNKNOWN)
async def get_schedule(schedule_id: str, relay: RelayDep) -> Response:
    return _json((await run_in_threadpool(_store(relay).get, schedule_id)).wire())


@schedules_router.patch("/{schedule_id}", response_model=ScheduleBody, responses=_UNKNOWN)
async def patch_schedule(
    schedule_id: str, relay: RelayDep, body: Annotated[dict[str, Any], _BODY]
) -> Response:
    """Change some fields (`enabled: false` pauses it); a new cadence, or enabling it again,
    counts its ticks from now."""
    changed = await run_in_threadpool(_store(relay).update, schedule_id, body)
    return _json(changed.wire())


@schedules_router.delete("/{schedule_id}", status_code=204, responses=_UNKNOWN)
async def delete_schedule(schedule_id: str, relay: RelayDep) -> Response:
    await run_in_threadpool(_store(relay).delete, schedule_id)
    return Response(status_code=204)
