"""Saved playbooks (CONTRACT §10): PUT a version, list, read one (any version), delete.

The body of a PUT is the playbook's YAML text (`Content-Type: text/yaml`, or
`application/x-yaml`, `text/plain`, none); `application/json` bodies are `{"yaml": "..."}` for
clients that only speak JSON. 201 for a new version; 200 when the text is the latest version's
already (nothing stored, see events.db.playbooks). Runs by name go through
`POST /api/executions` (`playbookName`, api.routes).
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import yaml
from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from api.access import IdentityDep
from api.routes import ERRORS, RelayDep, bearer_scheme, error_doc, store_of
from api.schemas import PlaybookSummary, SavedPlaybookBody
from events.db.playbooks import MAX_VERSION, check_name
from events.errors import InvalidRequestError
from events.params import wire_params

_YAML_TYPES = ("text/yaml", "application/x-yaml", "application/yaml", "text/plain")
_PUT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            **{t: {"schema": {"type": "string"}} for t in _YAML_TYPES},
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"yaml": {"type": "string"}},
                    "required": ["yaml"],
                }
            },
        },
    }
}
_UNKNOWN: dict[int | str, dict[str, Any]] = {404: error_doc("unknown saved playbook or version")}
_NO_DB: dict[int | str, dict[str, Any]] = {
    503: error_doc("no history database (CLOUDOPS_DATABASE_URL), or it does not answer")
}

playbooks_router = APIRouter(
    prefix="/api/playbooks",
    dependencies=[Depends(bearer_scheme)],
    responses={**ERRORS, **_NO_DB},
    tags=["playbooks"],
)


async def _yaml_text(request: Request) -> str:
    """The PUT body as text (see the module docstring); InvalidRequestError names the field."""
    raw = await request.body()
    if request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise InvalidRequestError("body", "invalid JSON") from e
        if not isinstance(data, dict) or "yaml" not in data:
            raise InvalidRequestError("yaml", "is required")
        if not isinstance(data["yaml"], str):
            raise InvalidRequestError("yaml", "must be a string")
        text: str = data["yaml"]
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidRequestError("body", "must be UTF-8 text") from e
    if not text.strip():
        raise InvalidRequestError("body", "is empty: send the playbook's YAML")
    return text


@playbooks_router.put(
    "/{name}",
    status_code=201,
    response_model=SavedPlaybookBody,
    response_model_exclude_none=True,
    responses={200: {"description": "unchanged: the latest version has this text already"}},
    openapi_extra=_PUT_BODY,
)
async def put_playbook(
    name: str,
    request: Request,
    relay: RelayDep,
    identity: IdentityDep,
) -> Response:
    """Save a playbook as `name`'s next version, after checking it as a run would (422 naming
    the problems, nothing stored)."""
    store = store_of(relay)
    check_name(name)
    text = await _yaml_text(request)
    saved = await run_in_threadpool(store.save, name, text, identity.name)
    body = saved.playbook.wire()
    return Response(
        orjson.dumps(body),
        status_code=201 if saved.created else 200,
        media_type="application/json",
        headers={"Location": f"/api/playbooks/{name}?version={saved.playbook.version}"},
    )


@playbooks_router.get("", response_model=list[PlaybookSummary])
async def list_playbooks(relay: RelayDep) -> Response:
    """Every saved playbook by name, with its latest version and when it was saved."""
    rows = await run_in_threadpool(store_of(relay).summaries)
    return Response(orjson.dumps(rows), media_type="application/json")


@playbooks_router.get(
    "/{name}",
    response_model=SavedPlaybookBody,
    response_model_exclude_none=True,
    responses=_UNKNOWN,
)
async def get_playbook(
    name: str,
    relay: RelayDep,
    version: Annotated[
        int | None, Query(ge=1, le=MAX_VERSION, description="default: the latest")
    ] = None,
) -> Response:
    """One version (the latest by default) with its YAML, every version of the name, and its
    declared `params` (what the console's form asks)."""
    saved = await run_in_threadpool(store_of(relay).get, name, version)
    body = saved.wire() | {"params": await run_in_threadpool(declared_params, saved.yaml)}
    return Response(orjson.dumps(body), media_type="application/json")


def declared_params(text: str) -> list[dict[str, Any]]:
    """The params a saved playbook's YAML declares (it was checked when saved)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return []
    return wire_params(data.get("params") if isinstance(data, dict) else None)


@playbooks_router.delete("/{name}", status_code=204, responses=_UNKNOWN)
async def delete_playbook(name: str, relay: RelayDep) -> Response:
    """Delete every version of a saved playbook (runs of it keep their records)."""
    await run_in_threadpool(store_of(relay).delete, name)
    return Response(status_code=204)
