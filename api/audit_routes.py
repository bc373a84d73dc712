"""`GET /api/audit` (admin): the audit log, newest first, filtered, a page at a time."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Query, Response
from starlette.concurrency import run_in_threadpool

from api.routes import ERRORS, RelayDep, bearer_scheme, error_doc
from events.db.audit import MAX_PAGE, parse_since
from events.db.errors import needs_database
from events.db.search import NEXT_CURSOR

audit_router = APIRouter(
    prefix="/api/audit",
    dependencies=[Depends(bearer_scheme)],
    responses={**ERRORS, 503: error_doc("no history database, or it does not answer")},
    tags=["audit"],
)


@audit_router.get("", responses={200: {"headers": {NEXT_CURSOR: {"description": "next page"}}}})
async def list_audit(
    relay: RelayDep,
    actor: Annotated[str | None, Query(max_length=255)] = None,
    action: Annotated[str | None, Query(max_length=255)] = None,
    since: Annotated[str | None, Query(description="RFC 3339: at or after")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    cursor: Annotated[str | None, Query(max_length=40)] = None,
) -> Response:
    """Audit entries newest first; `X-Next-Cursor` holds the next page's `cursor`."""
    audit, after = needs_database(relay.audit, "the audit log").log, parse_since(since)
    rows, next_cursor = await run_in_threadpool(
        lambda: audit.page(actor=actor, action=action, since=after, limit=limit, cursor=cursor)
    )
    headers = {NEXT_CURSOR: next_cursor} if next_cursor else {}
    return Response(orjson.dumps(rows), media_type="application/json", headers=headers)
