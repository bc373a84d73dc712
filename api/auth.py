"""Bearer tokens, single-use stream tickets, revocation of open streams, and keeping tokens
and tickets out of the logs.

A token is an `Identity`: a name, a role (CONTRACT §9) and an optional queue scope. Tokens of
`CLOUDOPS_API_TOKENS` are admins named `env-1`, `env-2`, ...; named tokens live in the history
database (`events.db.tokens.TokenStore`, injected; without a database only the env tokens
exist). A lookup's answer is kept `cache_ttl_s` (a few seconds): a revoked or expired token is
refused by every relay within that, while a busy relay asks the database about each token only
once per TTL. With no token configured and no database the relay refuses every data route
(fail closed).

Browsers cannot set headers on EventSource or WebSocket: `POST /api/stream-tickets`
`{"executionId": X}` (with a token) mints a random ticket bound to execution X, or to every
execution with `"*"`, that lives `stream_ticket_ttl_s` in Redis, records which token minted it,
is accepted once, as `?ticket=` on the SSE and WebSocket routes only, and opens only streams of
its execution. A stream remembers its token (`Grant.identity`, also for a ticket) and asks
`credential_valid` again every `stream_auth_recheck_s`: it ends when the answer is no.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aioredis

from api.store import checkpoint
from events.db.errors import DatabaseUnavailableError
from events.db.tokens import StoredToken, TokenStore, secret_digest
from events.keys import Keys
from events.vocabulary import Role

log = logging.getLogger(__name__)

ALL = "*"
# Longer than any token we mint or any sane env token: refused without hashing it.
MAX_TOKEN_CHARS = 512
# Lookups remembered at most (answers for unknown tokens included); past it the cache restarts.
CACHE_ENTRIES = 10_000

__all__ = ["ALL", "AuthError", "Authenticator", "Grant", "Identity", "Role", "token_id"]


def token_id(token: str) -> str:
    """What identifies a token in memory, in tickets and in counters, and what the database
    finds it by: the SHA-256 of the secret, never the secret (events.db.tokens says why)."""
    return secret_digest(token)


@dataclass(frozen=True)
class Identity:
    """Who a request is: the token's id (its digest), name, role, queue scope and expiry."""

    token_id: str
    name: str
    role: Role
    queues: frozenset[str] | None = None  # None: every queue
    expires_at: float | None = None  # epoch seconds

    def has_role(self, role: Role) -> bool:
        return self.role.includes(role)

    def valid_at(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at

    @classmethod
    def of(cls, tid: str, token: StoredToken) -> Identity:
        expires = None if token.expires_at is None else token.expires_at.timestamp()
        return cls(tid, token.name, token.role, token.queues, expires)


@dataclass(frozen=True)
class Grant:
    """What a stream was opened with: the token behind it and what it may follow."""

    identity: Identity
    scope: str = ALL  # ALL, or the one execution a ticket was minted for

    @property
    def token_id(self) -> str:
        return self.identity.token_id

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
        self,
        tokens: tuple[str, ...],
        client: aioredis.Redis,
        keys: Keys,
        ticket_ttl_s: int,
        *,
        store: TokenStore | None = None,
        cache_ttl_s: float = 2.0,
    ) -> None:
        self._env = {
            token_id(t): Identity(token_id(t), f"env-{i}", Role.ADMIN)
            for i, t in enumerate(tokens, 1)
        }
        self._store = store
        self._cache_ttl_s = cache_ttl_s
        self._cache: dict[str, tuple[float, Identity | None]] = {}
        self._asking: dict[str, asyncio.Task[Identity | None]] = {}
        self._revoked: set[str] = set()
        self._redis = client
        self._keys = keys
        self.ticket_ttl_s = ticket_ttl_s

    @property
    def configured(self) -> bool:
        return bool(self._env) or self._store is not None

    async def identity_of(self, tid: str) -> Identity | None:
        """The valid token with this id now, or None (unknown, revoked, expired).
        DatabaseUnavailableError when the database must be asked and does not answer."""
        if tid in self._revoked:
            return None
        found = self._env.get(tid)
        if found is None and self._store is not None:
            found = await self._cached(tid)
        return found if found is not None and found.valid_at(time.time()) else None

    async def _cached(self, tid: str) -> Identity | None:
        hit = self._cache.get(tid)
        if hit is not None and time.monotonic() - hit[0] < self._cache_ttl_s:
            return hit[1]
        # One question to the database per token at a time, however many requests wait.
        task = self._asking.get(tid)
        if task is None:
            task = asyncio.ensure_future(self._ask(tid))
            self._asking[tid] = task
            task.add_done_callback(lambda _: self._asking.pop(tid, None))
        return await asyncio.shield(task)

    async def _ask(self, tid: str) -> Identity | None:
        assert self._store is not None
        stored = await asyncio.to_thread(self._store.lookup, tid)
        found = None if stored is None else Identity.of(tid, stored)
        if len(self._cache) >= CACHE_ENTRIES:
            self._cache.clear()  # a flood of bad tokens costs lookups, never memory
        self._cache[tid] = (time.monotonic(), found)
        return found

    async def authenticate(self, token: str | None) -> Identity:
        """The token's identity; AuthError when it is missing or not (or no longer) valid."""
        if not self.configured:
            raise AuthError("the relay has no API token configured (CLOUDOPS_API_TOKENS)")
        if token is None:
            raise AuthError("missing bearer token")
        found = None if len(token) > MAX_TOKEN_CHARS else await self.identity_of(token_id(token))
        if found is None:
            raise AuthError("invalid, revoked or expired token")
        return found

    async def credential_valid(self, tid: str) -> bool:
        """Whether the token with this id may still be used (asked again by open streams). A
        database that does not answer keeps open streams open: new requests get the 503."""
        try:
            return await self.identity_of(tid) is not None
        except DatabaseUnavailableError:
            return True

    def forget(self) -> None:
        """Drop this process's cached answers (this relay revoked a token itself)."""
        self._cache.clear()

    def revoke(self, tid: str) -> None:
        """Stop accepting a token in this process, open streams included (tests)."""
        self._revoked.add(tid)

    # -- tickets ---------------------------------------------------------------------------
    def _ticket_key(self, ticket: str) -> str:
        # Only a digest goes into the key name, so a key listing shows no usable ticket.
        return self._keys.ticket(hashlib.sha256(ticket.encode()).hexdigest())

    async def issue_ticket(self, identity: Identity, scope: str) -> str:
        ticket = secrets.token_urlsafe(24)
        value = json.dumps({"t": identity.token_id, "s": scope})
        await self._redis.set(self._ticket_key(ticket), value, ex=self.ticket_ttl_s)
        checkpoint()
        return ticket

    async def redeem_ticket(self, ticket: str | None) -> Grant | None:
        """The ticket's grant, once: the ticket is deleted as it is read."""
        if not ticket or len(ticket) > 128 or not self.configured:
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
            tid, scope = str(data["t"]), str(data["s"])
        except (ValueError, KeyError, TypeError):
            return None
        found = await self.identity_of(tid)
        return None if found is None else Grant(found, scope)

    async def check_stream(
        self, authorization: str | None, ticket: str | None, token: str | None = None
    ) -> Grant:
        """For SSE and WebSocket: a bearer header, a ticket, or (WebSocket) `?token=`."""
        header = bearer_token(authorization)
        if header is not None or token is not None:
            return Grant(await self.authenticate(header if header is not None else token))
        if ticket is not None:
            if not self.configured:
                await self.authenticate(None)
            grant = await self.redeem_ticket(ticket)
            if grant is not None:
                return grant
            raise AuthError("invalid, expired or already used ticket")
        await self.authenticate(None)
        raise AssertionError("unreachable: authenticate(None) raises")

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
