"""Bearer tokens, short-lived stream tickets, and keeping both out of the logs.

Every data route needs `Authorization: Bearer <token>` with a token of `CLOUDOPS_API_TOKENS`.
With no token configured the relay refuses every data route (fail closed). Browsers cannot set
headers on EventSource or WebSocket: `POST /api/stream-tickets` (with a token) mints a random
ticket that lives `stream_ticket_ttl_s` in Redis and is accepted as `?ticket=` on the SSE and
WebSocket routes only. A stream opened with a ticket stays open after the ticket expired.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets

import redis.asyncio as aioredis

from api.store import checkpoint
from events.keys import Keys

log = logging.getLogger(__name__)


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
        return ok

    def check_token(self, token: str | None) -> None:
        if not self._tokens:
            raise AuthError("the relay has no API token configured (CLOUDOPS_API_TOKENS)")
        if token is None:
            raise AuthError("missing bearer token")
        if not self.token_ok(token):
            raise AuthError("invalid token")

    # -- tickets ---------------------------------------------------------------------------
    def _ticket_key(self, ticket: str) -> str:
        # Only a digest goes into the key name, so a key listing shows no usable ticket.
        return self._keys.ticket(hashlib.sha256(ticket.encode()).hexdigest())

    async def issue_ticket(self) -> str:
        ticket = secrets.token_urlsafe(24)
        await self._redis.set(self._ticket_key(ticket), "1", ex=self.ticket_ttl_s)
        checkpoint()
        return ticket

    async def ticket_ok(self, ticket: str | None) -> bool:
        if not ticket or len(ticket) > 128 or not self._tokens:
            return False
        found = bool(await self._redis.exists(self._ticket_key(ticket)))
        checkpoint()
        return found

    async def check_stream(
        self, authorization: str | None, ticket: str | None, token: str | None = None
    ) -> None:
        """For SSE and WebSocket: a bearer header, a ticket, or (WebSocket) `?token=`."""
        header = bearer_token(authorization)
        if header is not None or token is not None:
            self.check_token(header if header is not None else token)
            return
        if ticket is not None:
            if not self._tokens:
                self.check_token(None)
            if await self.ticket_ok(ticket):
                return
            raise AuthError("invalid or expired ticket")
        self.check_token(None)


# -- logs --------------------------------------------------------------------------------------
_SECRET_QUERY = re.compile(r"(?i)([?&](?:token|ticket|access_token)=)[^&\s\"']*")


def redact(text: str) -> str:
    return _SECRET_QUERY.sub(r"\1***", text)


class RedactSecrets(logging.Filter):
    """Masks `token=` and `ticket=` query values in log records (uvicorn logs full paths)."""

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
