"""Every error as `{"detail": "..."}`; bad input names the field (`options.timeout: ...`). A
request refused for a list of problems (a bad playbook, CONTRACT §5) has FastAPI's shape:
`{"detail": [{"loc": ["body", "playbook", "steps", 1, "timeout"], "msg": "..."}, ...]}`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from api.auth import AuthError
from api.schemas import COMMAND_TYPES
from events.db.errors import DatabaseUnavailableError, NoDatabaseError
from events.errors import (
    BrokerUnavailableError,
    BusError,
    CannotRerunError,
    ExecutionEndedError,
    InvalidRequestError,
    ProblemsError,
    UnknownExecutionError,
    UnknownPlaybookError,
    UnknownScheduleError,
    UnknownTokenError,
)

log = logging.getLogger(__name__)

# Where FastAPI found the value: the location word is not part of the field's name.
_SOURCES = {"body", "query", "path", "header", "cookie"}
_HEADER_NAMES = {"last-event-id": "Last-Event-ID"}
# pydantic puts the discriminator's value in the location of a tagged union's errors.
_UNION_TAGS = set(COMMAND_TYPES)


def field_name(loc: Sequence[Any]) -> str:
    parts = list(loc)
    source = parts.pop(0) if parts and parts[0] in _SOURCES else None
    if source == "body" and parts and isinstance(parts[0], int):
        return "body"  # a JSON syntax error: loc is the character position
    if source == "header" and parts:
        return _HEADER_NAMES.get(str(parts[0]).lower(), str(parts[0]))
    if source == "body" and parts and parts[0] in _UNION_TAGS:
        parts.pop(0)
    name = ""
    for p in parts:
        name += f"[{p}]" if isinstance(p, int) else (f".{p}" if name else str(p))
    return name or source or "request"


def error_message(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    if kind in ("missing", "union_tag_not_found"):
        return "is required"
    if kind == "union_tag_invalid":
        return f"must be one of {ctx.get('expected_tags')}"
    if kind == "string_pattern_mismatch":
        pattern = ctx.get("pattern")
        return "must not be blank" if pattern == r"\S" else f"must match {pattern}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "must be an integer"
    if kind == "greater_than":
        return "must be a positive integer" if ctx.get("gt") == 0 else f"must be > {ctx['gt']}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}"
    if kind == "less_than_equal":
        return f"must be at most {ctx.get('le')}"
    if kind in ("string_type", "string_unicode"):
        return "must be a string"
    if kind in ("literal_error", "enum"):
        return f"must be one of {ctx.get('expected')}"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind in ("model_attributes_type", "dict_type", "model_type"):
        return "must be a JSON object"
    if kind == "json_invalid":
        return "invalid JSON"
    msg = str(err.get("msg", "is invalid"))
    msg = msg.removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:]


def validation_detail(errors: Sequence[Any]) -> str:
    if not errors:
        return "request: invalid"
    err = errors[0]
    name = field_name(err.get("loc", ()))
    if err.get("type", "").startswith("union_tag_"):
        if not isinstance(err.get("input"), dict):
            return "body: must be a JSON object"
        name = "commandType"  # the only tagged union of the API: the submit body
    return f"{name}: {error_message(err)}"


def _json(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _json(422, validation_detail(exc.errors()))


async def _http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 400 and "parsing the body" in str(exc.detail):
        # FastAPI's answer to a body that is not UTF-8 / not decodable: bad input like any other.
        return _json(422, "body: invalid JSON")
    return _json(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def _invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidRequestError)
    return _json(422, f"{exc.field}: {exc.message}")


async def _problems(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemsError)
    # Every problem names a field of the body, as FastAPI's own locations do.
    detail = [{"loc": ["body", *p.loc], "msg": p.msg} for p in exc.problems]
    return JSONResponse({"detail": detail}, status_code=422)


async def _unknown(_: Request, exc: Exception) -> JSONResponse:
    return _json(404, str(exc))


async def _no_database(_: Request, exc: Exception) -> JSONResponse:
    return _json(503, str(exc))


async def _database_unavailable(_: Request, exc: Exception) -> JSONResponse:
    log.warning("%s", exc)
    return _json(503, str(exc))


async def _ended(_: Request, exc: Exception) -> JSONResponse:
    return _json(409, str(exc))


async def _auth(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AuthError)
    return _json(401, exc.detail, {"WWW-Authenticate": "Bearer"})


async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
    log.warning("event store unavailable: %s", exc)
    return _json(503, "the event store (Redis) is unavailable; retry later")


async def _broker_unavailable(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BrokerUnavailableError)
    log.warning("%s", exc)
    return _json(503, f"the broker ({exc.broker}) is unavailable; retry later")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(InvalidRequestError, _invalid)
    app.add_exception_handler(ProblemsError, _problems)  # the most derived class's handler wins
    app.add_exception_handler(UnknownExecutionError, _unknown)
    app.add_exception_handler(UnknownPlaybookError, _unknown)
    app.add_exception_handler(UnknownScheduleError, _unknown)
    app.add_exception_handler(UnknownTokenError, _unknown)
    app.add_exception_handler(NoDatabaseError, _no_database)
    app.add_exception_handler(DatabaseUnavailableError, _database_unavailable)
    app.add_exception_handler(ExecutionEndedError, _ended)
    app.add_exception_handler(CannotRerunError, _ended)
    app.add_exception_handler(AuthError, _auth)
    app.add_exception_handler(redis.ConnectionError, _unavailable)
    app.add_exception_handler(redis.TimeoutError, _unavailable)
    app.add_exception_handler(BusError, _unavailable)
    app.add_exception_handler(BrokerUnavailableError, _broker_unavailable)
