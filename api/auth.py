"""Bearer tokens, single-use stream tickets, revocation of open streams, and keeping tokens
and tickets out of the logs.

Every data route needs `Authorization: Bearer <token>` with a token of `CLOUDOPS_API_TOKENS`.
With no token configured the relay refuses every data route (fail closed). Browsers cannot set
headers on EventSource or WebSocket: `POST /api/stream-tickets` `{"executionId": X}` (with a
token) mints a random ticket bound to execution X, or to every execution with `"*"` (when the
token may stream them all), that lives `stream_ticket_ttl_s` in Redis, records which token
minted it, is accepted once, as `?ticket=` on the SSE and WebSocket routes only, and opens
only streams of its execution.

A stream remembers the token it was opened with (`Grant.token_id`, also for a ticket) and asks
`Authenticator.credential_valid` again every `stream_auth_recheck_s`: it ends when the answer
is no. Today tokens come from the environment and `revoke()` is the only way one stops being
valid (tests); issue 16 (named tokens, roles, revocation within 5 s) plugs its token store into
`credential_valid`, `may_stream_all` and `check_token`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

import redis.asyncio as aioredis

from api.store import checkpoint
from events.keys import Keys

log = logging.getLogger(__name__)

ALL = "*"


class Role(StrEnum):
    """What a token may do (CONTRACT §9); each role includes the ones before it."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"


def token_id(token: str) -> str:
    """What identifies a token in memory, in tickets and in counters: never the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Grant:
    """What a stream was opened with: the token behind it and what it may follow."""

    token_id: str
    scope: str = ALL  # ALL, or the one execution a ticket was minted for

    def allows(self, target: str) -> bool:
        return self.scope == ALL or self.scope == target


class AuthError(Exception):
    """The request carries no valid credential; `detail` says why (never echoing it)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class Authenticator:
    def __init__(
        self, tokens: tuple[str, ...], client: aioredis.Redis, keys: Keys, ticket_ttl_s: int
    ) -> None:
        self._tokens = tuple(t.encode() for t in tokens)
        self._ids = frozenset(token_id(t) for t in tokens)
        self._revoked: set[str] = set()
        self._redis = client
        self._keys = keys
        self.ticket_ttl_s = ticket_ttl_s

    @property
    def configured(self) -> bool:
        return bool(self._tokens)

    def token_ok(self, token: str | None) -> bool:
        if token is None:
            return False
        given = token.encode()
        ok = False
        for t in self._tokens:  # no early exit: the time taken says nothing about which failed
            ok |= hmac.compare_digest(t, given)
        return ok and token_id(token) not in self._revoked

    def check_token(self, token: str | None) -> str:
        """The token's id; AuthError when it is missing or not (or no longer) valid."""
        if not self._tokens:
            raise AuthError("the relay has no API token configured (CLOUDOPS_API_TOKENS)")
        if token is None:
            raise AuthError("missing bearer token")
        if not self.token_ok(token):
            raise AuthError("invalid token")
        return token_id(token)

    async def credential_valid(self, tid: str) -> bool:
        """Whether the token with this id may still be used (asked again by open streams)."""
        return tid in self._ids and tid not in self._revoked

    def revoke(self, tid: str) -> None:
        """Stop accepting a token in this process, open streams included (within
        `stream_auth_recheck_s`). Issue 16 replaces this with its token store."""
        self._revoked.add(tid)

    def may_stream_all(self, tid: str) -> bool:
        """Whether a ticket for every execution (`*`) may be minted for this token: every
        token of CLOUDOPS_API_TOKENS is an admin (CONTRACT §9); roles come with issue 16."""
        return tid in self._ids

    def token_name(self, tid: str) -> str | None:
        """The token's name, for `createdBy` and `submittedBy` (CONTRACT §9). Tokens of
        CLOUDOPS_API_TOKENS have none yet; issue 16's token store answers here."""
        return None

    def has_role(self, tid: str, role: Role) -> bool:
        """Whether the token may act as `role` (CONTRACT §9: viewer < operator < admin). Every
        token of CLOUDOPS_API_TOKENS is an admin; issue 16's token store answers here, and
        `api.routes.require_role` turns a no into a 403 naming the role."""
        return tid in self._ids

    # -- tickets ---------------------------------------------------------------------------
    def _ticket_key(self, ticket: str) -> str:
        # Only a digest goes into the key name, so a key listing shows no usable ticket.
        return self._keys.ticket(hashlib.sha256(ticket.encode()).hexdigest())

    async def issue_ticket(self, tid: str, scope: str) -> str:
        ticket = secrets.token_urlsafe(24)
        value = json.dumps({"t": tid, "s": scope})
        await self._redis.set(self._ticket_key(ticket), value, ex=self.ticket_ttl_s)
        checkpoint()
        return ticket

    async def redeem_ticket(self, ticket: str | None) -> Grant | None:
        """The ticket's grant, once: the ticket is deleted as it is read."""
        if not ticket or len(ticket) > 128 or not self._tokens:
            return None
        pipe = self._redis.pipeline(transaction=True)
        key = self._ticket_key(ticket)
        pipe.get(key)
        pipe.delete(key)
        raw, _ = await pipe.execute()
        checkpoint()
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            grant = Grant(str(data["t"]), str(data["s"]))
        except (ValueError, KeyError, TypeError):
            return None
        return grant if await self.credential_valid(grant.token_id) else None

    async def check_stream(
        self, authorization: str | None, ticket: str | None, token: str | None = None
    ) -> Grant:
        """For SSE and WebSocket: a bearer header, a ticket, or (WebSocket) `?token=`."""
        header = bearer_token(authorization)
        if header is not None or token is not None:
            return Grant(self.check_token(header if header is not None else token))
        if ticket is not None:
            if not self._tokens:
                self.check_token(None)
            grant = await self.redeem_ticket(ticket)
            if grant is not None:
                return grant
            raise AuthError("invalid, expired or already used ticket")
        self.check_token(None)
        raise AssertionError("unreachable: check_token(None) raises")

    async def until_revoked(self, tid: str, every_s: float) -> None:
        """Returns once the token is no longer valid (for an open stream to end)."""
        while True:
            await asyncio.sleep(every_s)
            if not await self.credential_valid(tid):
                return


# -- logs --------------------------------------------------------------------------------------
# A request target's query, whatever its encoding (`%74oken=`, `;token=`): uvicorn logs the raw
# target, and Starlette decodes parameter names, so matching names would miss some. The query
# is dropped from every log line; the path stays.
_QUERY = re.compile(r"(/[^\s?\"']*)\?[^\s\"']*")
REDACTED_QUERY = "?[query not logged]"


def redact(text: str) -> str:
    return _QUERY.sub(lambda m: m.group(1) + REDACTED_QUERY, text) if "?" in text else text


class RedactSecrets(logging.Filter):
    """Drops the query of every request target in log records (uvicorn logs full paths)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


def install_log_redaction() -> None:
    """Add the filter to uvicorn's loggers (the access log, and the error log where uvicorn
    writes WebSocket paths); idempotent."""
    for name in ("uvicorn.access", "uvicorn.error", "uvicorn"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())
