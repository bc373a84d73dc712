"""Who may call what (CONTRACT §9): every route's required role, in one table, enforced by one
dependency that the app puts in front of every route (`authorize`).

`viewer` reads (lists, records, output, streams, workers, metrics), `operator` also starts,
cancels and reruns (and saves playbooks), `admin` may do everything (tokens, deleting saved
playbooks). A route missing from RULES is refused to every token (fail closed), and
tests/relay/test_access.py, generated from the app's own routes, fails for it.

401: no valid credential (api.auth). 403: the token lacks the role; `detail` names the role.
"""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, HTTPException
from starlette.requests import HTTPConnection

from api.auth import Grant, Identity, bearer_token
from api.feed import Admit
from api.relay import Relay
from events.scope import outside
from events.vocabulary import Role

PUBLIC = None
VIEWER, OPERATOR, ADMIN = Role.VIEWER, Role.OPERATOR, Role.ADMIN

# "METHOD path" (the route's template) -> the role it needs; PUBLIC: no token (no data).
RULES: dict[str, Role | None] = {
    "GET /": PUBLIC,
    "GET /cloudops-events.js": PUBLIC,
    "GET /static": PUBLIC,
    "GET /healthz": PUBLIC,
    "GET /openapi.json": PUBLIC,
    "GET /api/executions": VIEWER,
    "GET /api/executions/{execution_id}": VIEWER,
    "GET /api/executions/{execution_id}/output": VIEWER,
    "GET /api/executions/{execution_id}/notifications": VIEWER,
    "GET /api/executions/{execution_id}/events": VIEWER,
    "GET /api/events": VIEWER,
    "WEBSOCKET /api/ws": VIEWER,
    "POST /api/stream-tickets": VIEWER,
    "GET /api/workers": VIEWER,
    "GET /api/whoami": VIEWER,
    "GET /metrics": VIEWER,
    "GET /api/playbooks": VIEWER,
    "GET /api/playbooks/{name}": VIEWER,
    "POST /api/executions": OPERATOR,
    "POST /api/executions/{execution_id}/cancel": OPERATOR,
    "POST /api/executions/{execution_id}/rerun": OPERATOR,
    "PUT /api/playbooks/{name}": OPERATOR,
    "DELETE /api/playbooks/{name}": ADMIN,
    "GET /api/schedules": VIEWER,
    "GET /api/schedules/{schedule_id}": VIEWER,
    "POST /api/schedules": OPERATOR,
    "PATCH /api/schedules/{schedule_id}": OPERATOR,
    "DELETE /api/schedules/{schedule_id}": ADMIN,
    "POST /api/tokens": ADMIN,
    "GET /api/tokens": ADMIN,
    "DELETE /api/tokens/{name}": ADMIN,
    "GET /api/audit": ADMIN,
}

# The stream routes, where a browser's `?ticket=` stands in for the Authorization header.
TICKET_ROUTES = frozenset({"GET /api/executions/{execution_id}/events", "GET /api/events"})


class NoRuleError(LookupError):
    """A route without a line in RULES."""


def rule_key(method: str, path: str) -> str:
    return f"{method.upper()} {path}"


def required_role(key: str) -> Role | None:
    if key not in RULES:
        raise NoRuleError(key)
    return RULES[key]


def forbid_unless(identity: Identity, role: Role) -> None:
    """403 naming the role the token lacks."""
    if not identity.has_role(role):
        raise HTTPException(
            403, f"this needs the {role} role (token {identity.name} is {identity.role})"
        )


async def authorize(conn: HTTPConnection) -> Identity | None:
    """The app-wide dependency: authenticate (401) and check the route's role (403); the
    identity is kept as `conn.state.identity` (and the stream's grant as `conn.state.grant`).
    WebSocket routes authenticate in their handler, before the accept (api.streams)."""
    if conn.scope["type"] == "websocket":
        return None
    route = conn.scope.get("route")
    key = rule_key(conn.scope["method"], getattr(route, "path", conn.url.path))
    try:
        role = required_role(key)
    except NoRuleError:
        raise HTTPException(403, f"no access rule for {key}: refused to every token") from None
    if role is PUBLIC:
        return None
    relay = cast(Relay, conn.app.state.relay)
    header = conn.headers.get("authorization")
    if key in TICKET_ROUTES:
        grant = await relay.auth.check_stream(header, conn.query_params.get("ticket"))
    else:
        grant = Grant(await relay.auth.authenticate(bearer_token(header)))
    conn.state.grant = grant
    conn.state.identity = grant.identity  # before the 403 too: the audit log names the actor
    forbid_unless(grant.identity, role)
    return grant.identity


def _scope_refusal(identity: Identity, bad: str) -> HTTPException:
    allowed = ", ".join(sorted(identity.queues or ()))
    return HTTPException(403, f"token {identity.name} is limited to queues {allowed}: not {bad}")


def check_queues(identity: Identity, queues: frozenset[str] | None) -> None:
    """403 naming the queue(s) of a new execution outside the token's scope."""
    bad = outside(identity.queues, queues)
    if bad is not None:
        raise _scope_refusal(identity, bad)


async def check_scope(relay: Relay, identity: Identity, execution_id: str) -> None:
    """403 naming the queue when the execution runs on one outside the token's queues (an
    unknown execution is the route's 404)."""
    if identity.queues is None:
        return
    known, queues = await relay.queues.of(execution_id)
    if known:
        check_queues(identity, queues)


async def may_see(relay: Relay, identity: Identity, execution_id: str) -> bool:
    """Whether a list or a `*` stream shows this execution to the token."""
    if identity.queues is None:
        return True
    known, queues = await relay.queues.of(execution_id)
    return known and outside(identity.queues, queues) is None


def admit_for(relay: Relay, identity: Identity) -> Admit | None:
    """The filter of the token's `*` streams (None: it sees every execution)."""
    if identity.queues is None:
        return None

    async def admit(execution_id: str) -> bool:
        return await may_see(relay, identity, execution_id)

    return admit


def current_identity(identity: Annotated[Identity | None, Depends(authorize)]) -> Identity:
    """The request's token (FastAPI runs `authorize` once per request): its name is the actor
    of what it does (the record's `submittedBy`, a saved playbook's `createdBy`, the audit
    log's `actor`)."""
    assert identity is not None, "a public route asked who is calling"
    return identity


IdentityDep = Annotated[Identity, Depends(current_identity)]
