"""Named API tokens (CONTRACT §9): a name, a role, an optional queue scope and expiry, and the
SHA-256 of a random secret that is shown once, at creation, and never stored.

Why SHA-256 and not a password hash (bcrypt, scrypt, Argon2): those are slow on purpose, to make
guessing a human's low-entropy password expensive. A token's secret is 256 random bits: no
guess of it succeeds, however fast the hash, so a slow one would only make every request cost
tens of milliseconds of CPU. A fast hash also lets the relay find the row by the hash (one
index lookup), where a salted slow hash would need the row first. GitHub, GitLab and PyPI
store their API tokens the same way.

A revoked token keeps its row (`revoked_at`): names are never reused, so an audit entry's actor
always means one token. Lookups answer only tokens that are neither revoked nor expired.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from events.db.engine import write_connection
from events.db.errors import DatabaseUnavailableError, unavailable
from events.db.playbooks import check_name
from events.db.schema import api_tokens as t
from events.errors import InvalidRequestError, UnknownTokenError
from events.vocabulary import Role

# A prefix says what the string is (secret scanners match it); the rest is 256 random bits.
SECRET_PREFIX = "cot_"
QUEUE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:-]{0,199}")
# The names CLOUDOPS_API_TOKENS' tokens go by: one name, one token, in the audit log too.
ENV_NAME_RE = re.compile(r"env-\d+")
# Ten years: any longer is "never" (and past what a datetime can add).
MAX_EXPIRES_IN_S = 10 * 366 * 86400


def secret_digest(secret: str) -> str:
    """What the database keeps of a secret, and what the relay looks it up by."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def check_queues(queues: list[str] | None) -> frozenset[str] | None:
    """A token's queue scope: None (every queue), or a non-empty set of queue names."""
    if queues is None:
        return None
    names = [q.strip() for q in queues if q.strip()]
    if not names:
        raise InvalidRequestError("queues", "must name at least one queue (or be left out)")
    for q in names:
        if not QUEUE_RE.fullmatch(q):
            raise InvalidRequestError("queues", f"not a queue name: {q!r}")
    return frozenset(names)


@dataclass(frozen=True)
class StoredToken:
    """A token as the database holds it (no secret)."""

    name: str
    role: Role
    queues: frozenset[str] | None
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    revoked_at: datetime | None

    def wire(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": str(self.role),
            "queues": None if self.queues is None else sorted(self.queues),
            "createdAt": _iso(self.created_at),
            "createdBy": self.created_by,
            "expiresAt": _iso(self.expires_at),
            "revokedAt": _iso(self.revoked_at),
        }


def _row(row: Any) -> StoredToken:
    queues = None if row.queues is None else frozenset(row.queues.split(","))
    return StoredToken(
        row.name,
        Role(row.role),
        queues,
        row.created_at,
        row.created_by,
        row.expires_at,
        row.revoked_at,
    )


class TokenStore:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _unavailable(self, e: SQLAlchemyError) -> DatabaseUnavailableError:
        return unavailable(self._engine.url.render_as_string(hide_password=True), e)

    def create(
        self,
        name: str,
        role: Role,
        queues: list[str] | None = None,
        expires_in_s: float | None = None,
        created_by: str | None = None,
    ) -> tuple[StoredToken, str]:
        """A new token and its secret (the only time the secret exists outside its holder)."""
        check_name(name)
        if ENV_NAME_RE.fullmatch(name):
            raise InvalidRequestError(
                "name", f"{name!r} is the name of a CLOUDOPS_API_TOKENS token"
            )
        scope = check_queues(queues)
        if expires_in_s is not None and not 0 < expires_in_s <= MAX_EXPIRES_IN_S:
            raise InvalidRequestError(
                "expiresInS", f"must be a number of seconds from 1 to {MAX_EXPIRES_IN_S}"
            )
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        expires = None if expires_in_s is None else now + timedelta(seconds=expires_in_s)
        values = {
            "name": name,
            "secret_sha256": secret_digest(secret),
            "role": str(role),
            "queues": None if scope is None else ",".join(sorted(scope)),
            "created_at": now,
            "created_by": created_by,
            "expires_at": expires,
            "revoked_at": None,
        }
        try:
            with write_connection(self._engine) as conn, conn.begin():
                if conn.execute(select(t.c.name).where(t.c.name == name)).first() is not None:
                    raise InvalidRequestError("name", f"a token named {name!r} exists already")
                conn.execute(t.insert().values(**values))
        except IntegrityError as e:  # a concurrent create of the same name
            raise InvalidRequestError("name", f"a token named {name!r} exists already") from e
        except SQLAlchemyError as e:
            raise self._unavailable(e) from e
        return StoredToken(name, role, scope, now, created_by, expires, None), secret

    def list(self) -> list[StoredToken]:
        """Every token, revoked and expired ones included, by name."""
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(select(t).order_by(t.c.name)).all()
        except SQLAlchemyError as e:
            raise self._unavailable(e) from e
        return [_row(r) for r in rows]

    def revoke(self, name: str) -> None:
        """Refuse the token from now on (relays: within their cache's TTL)."""
        stmt = (
            update(t)
            .where(t.c.name == name, t.c.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
        try:
            with write_connection(self._engine) as conn, conn.begin():
                changed = conn.execute(stmt).rowcount
        except SQLAlchemyError as e:
            raise self._unavailable(e) from e
        if not changed:
            raise UnknownTokenError(name)

    def lookup(self, digest: str) -> StoredToken | None:
        """The valid token whose secret has this digest: not revoked, not expired."""
        stmt = select(t).where(t.c.secret_sha256 == digest, t.c.revoked_at.is_(None))
        try:
            with self._engine.connect() as conn:
                row = conn.execute(stmt).first()
        except SQLAlchemyError as e:
            raise self._unavailable(e) from e
        if row is None:
            return None
        token = _row(row)
        if token.expires_at is not None and token.expires_at <= datetime.now(UTC):
            return None
        return token
