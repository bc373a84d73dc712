"""HTTP client of the relay, for the CLI's remote mode: submit, cancel, list, and follow an
execution's SSE stream, resuming with Last-Event-ID after any break."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from events.db.errors import NEEDS_DATABASE, NoDatabaseError
from events.errors import (
    CannotRerunError,
    CloudOpsError,
    ExecutionEndedError,
    InvalidRequestError,
    Problem,
    ProblemsError,
    UnknownExecutionError,
    UnknownPlaybookError,
    UnknownScheduleError,
    UnknownTokenError,
)
from events.wire import RawEvent


class RelayError(CloudOpsError):
    """The relay answered with an error we cannot map to a domain error."""


class RelayClient:
    def __init__(self, base_url: str, token: str | None, *, timeout_s: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url.rstrip("/")
        try:
            url = httpx.URL(self.base_url)
        except httpx.InvalidURL as e:
            raise InvalidRequestError("remote", f"not a URL: {base_url!r}") from e
        if url.scheme not in ("http", "https") or not url.host:
            raise InvalidRequestError("remote", f"must be an http(s) URL, got {base_url!r}")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise RelayError(f"relay {self.base_url} unreachable: {e}") from e

    def close(self) -> None:
        self._http.close()

    def _check(self, resp: httpx.Response, execution_id: str = "") -> Any:
        if resp.status_code == 404 and execution_id:
            raise UnknownExecutionError(execution_id)
        if resp.status_code == 503 and _detail(resp).endswith(NEEDS_DATABASE):
            raise NoDatabaseError(_detail(resp).removesuffix(NEEDS_DATABASE))
        if resp.status_code == 409:
            raise ExecutionEndedError(execution_id, "ended")
        if resp.status_code == 422:
            problems = _problems(resp)
            if problems:
                raise ProblemsError(problems)
            detail = _detail(resp)
            field, _, msg = detail.partition(": ")
            raise InvalidRequestError(field if msg else "request", msg or detail)
        if resp.status_code >= 400:
            raise RelayError(f"relay answered {resp.status_code}: {_detail(resp)}")
        return resp.json() if resp.content else None

    def submit(self, body: Mapping[str, Any]) -> str:
        data = self._check(self._request("POST", "/api/executions", json=dict(body)))
        return str(data["executionId"])

    def cancel(self, execution_id: str) -> None:
        self._check(self._request("POST", f"/api/executions/{execution_id}/cancel"), execution_id)

    def rerun(self, execution_id: str, hosts: str, params: Mapping[str, str] | None = None) -> str:
        body: dict[str, Any] = {"hosts": hosts} | ({"params": dict(params)} if params else {})
        resp = self._request("POST", f"/api/executions/{execution_id}/rerun", json=body)
        if resp.status_code == 409:  # not ended yet, or nothing to rerun: the relay says which
            raise CannotRerunError(execution_id, _detail(resp))
        return str(self._check(resp, execution_id)["executionId"])

    def get(self, execution_id: str) -> dict[str, Any]:
        return dict(
            self._check(self._request("GET", f"/api/executions/{execution_id}"), execution_id)
        )

    def search(
        self, filters: Mapping[str, str], limit: int = 50, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the executions list and the next page's cursor (X-Next-Cursor)."""
        return self._page("/api/executions", filters, limit, cursor)

    def workers(self) -> list[dict[str, Any]]:
        """The host registry (`GET /api/workers`)."""
        return list(self._check(self._request("GET", "/api/workers")))

    def put_playbook(self, name: str, text: str) -> tuple[dict[str, Any], bool]:
        """Save a version (`PUT /api/playbooks/{name}`); the saved version, and whether it is
        new (201) rather than the latest one unchanged (200)."""
        resp = self._request(
            "PUT",
            f"/api/playbooks/{quote(name, safe='')}",
            content=text.encode(),
            headers={"Content-Type": "text/yaml; charset=utf-8"},
        )
        return dict(self._check(resp)), resp.status_code == 201

    def playbooks(self) -> list[dict[str, Any]]:
        return list(self._check(self._request("GET", "/api/playbooks")))

    def playbook(self, name: str, version: int | None = None) -> dict[str, Any]:
        params = {"version": version} if version is not None else {}
        path = f"/api/playbooks/{quote(name, safe='')}"
        resp = self._request("GET", path, params=params)
        if resp.status_code == 404:
            raise UnknownPlaybookError(name, version)
        return dict(self._check(resp))

    def add_schedule(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return dict(self._check(self._request("POST", "/api/schedules", json=dict(body))))

    def schedules(self) -> list[dict[str, Any]]:
        return list(self._check(self._request("GET", "/api/schedules")))

    def delete_schedule(self, schedule_id: str) -> None:
        self._delete(
            f"/api/schedules/{quote(schedule_id, safe='')}", UnknownScheduleError(schedule_id)
        )

    def create_token(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /api/tokens`: the new token, its secret included (shown once)."""
        return dict(self._check(self._request("POST", "/api/tokens", json=dict(body))))

    def tokens(self) -> list[dict[str, Any]]:
        return list(self._check(self._request("GET", "/api/tokens")))

    def revoke_token(self, name: str) -> None:
        self._delete(f"/api/tokens/{quote(name, safe='')}", UnknownTokenError(name))

    def _delete(self, path: str, unknown: CloudOpsError) -> None:
        """`DELETE path`; a 404 raises `unknown`."""
        resp = self._request("DELETE", path)
        if resp.status_code == 404:
            raise unknown
        self._check(resp)

    def audit(
        self, filters: Mapping[str, str], limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        return self._page("/api/audit", filters, limit, cursor)

    def _page(
        self, path: str, filters: Mapping[str, str], limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of a list (`GET path?filters&limit&cursor`) and the next page's cursor."""
        params: dict[str, Any] = {**filters, "limit": limit}
        if cursor:
            params["cursor"] = cursor
        resp = self._request("GET", path, params=params)
        return list(self._check(resp)), resp.headers.get("X-Next-Cursor")

    def follow(self, execution_id: str, after: int = 0) -> Iterator[RawEvent]:
        """Events after `after` until execution_complete; reconnects and resumes by itself."""
        last = after
        backoff_s = 0.1
        while True:
            try:
                with self._http.stream(
                    "GET",
                    f"/api/executions/{execution_id}/events",
                    headers={"Last-Event-ID": str(last), "Accept": "text/event-stream"},
                    timeout=httpx.Timeout(30.0, read=None),
                ) as resp:
                    if resp.status_code == 204:
                        return  # it ended at or before `last`: nothing more will come
                    if resp.status_code != 200:
                        resp.read()
                        self._check(resp, execution_id)
                    for ev in _parse_sse(resp.iter_lines()):
                        if ev.id <= last:
                            continue
                        last = ev.id
                        backoff_s = 0.1
                        yield ev
                        if ev.terminal:
                            return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                time.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 2.0)


def _parse_sse(lines: Iterator[str]) -> Iterator[RawEvent]:
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield RawEvent.from_json("\n".join(data))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


def _problems(resp: httpx.Response) -> list[Problem]:
    """The problems of a 422 whose detail lists them (a bad playbook), else none."""
    try:
        detail = resp.json().get("detail")
    except (ValueError, AttributeError):
        return []
    if not isinstance(detail, list):
        return []
    problems: list[Problem] = []
    for item in detail:
        loc = item.get("loc") if isinstance(item, dict) else None
        if not isinstance(loc, list) or not isinstance(item.get("msg"), str):
            return []
        # "body" says where the relay found it; the CLI's problems name the request field.
        loc = loc[1:] if loc[:1] == ["body"] else loc
        problems.append(
            Problem(tuple(p if isinstance(p, int) else str(p) for p in loc), item["msg"])
        )
    return problems


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)
