"""Named API tokens (CONTRACT §9), for admins: create (the secret answered once), list, revoke.
They live in the history database (events.db.tokens); without one, 503 naming it."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Depends, Response
from starlette.concurrency import run_in_threadpool

from api.access import IdentityDep
from api.relay import Relay
from api.routes import ERRORS, RelayDep, bearer_scheme, error_doc
from api.schemas import TokenCreated, TokenInfo, TokenRequest
from events.db.errors import needs_database
from events.db.tokens import TokenStore

tokens_router = APIRouter(
    prefix="/api/tokens",
    dependencies=[Depends(bearer_scheme)],
    responses={
        **ERRORS,
        503: error_doc("no history database (CLOUDOPS_DATABASE_URL), or it does not answer"),
    },
    tags=["tokens"],
)


def token_store(relay: Relay) -> TokenStore:
    return needs_database(relay.tokens, "API tokens")


@tokens_router.post("", status_code=201, response_model=TokenCreated)
async def create_token(body: TokenRequest, relay: RelayDep, identity: IdentityDep) -> Response:
    """A new token; the answer holds its secret, the only time it is shown."""
    token, secret = await run_in_threadpool(
        token_store(relay).create,
        body.name,
        body.role,
        body.queues,
        body.expires_in_s,
        identity.name,
    )
    return Response(
        orjson.dumps({**token.wire(), "secret": secret}),
        status_code=201,
        media_type="application/json",
        # A secret: no cache, no proxy may keep it.
        headers={
            "Cache-Control": "no-store",
            "Pragma": "no-cache",
            "Location": f"/api/tokens/{token.name}",
        },
    )


@tokens_router.get("", response_model=list[TokenInfo])
async def list_tokens(relay: RelayDep) -> Response:
    """Every token by name, revoked and expired ones included (never a secret)."""
    rows = await run_in_threadpool(token_store(relay).list)
    return Response(orjson.dumps([r.wire() for r in rows]), media_type="application/json")


@tokens_router.delete(
    "/{name}", status_code=204, responses={404: error_doc("no such token, or revoked already")}
)
async def revoke_token(name: str, relay: RelayDep) -> Response:
    """Revoke a token: this relay refuses it at once, every relay within its cache's TTL."""
    await run_in_threadpool(token_store(relay).revoke, name)
    relay.auth.forget()
    return Response(status_code=204)
