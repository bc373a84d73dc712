"""HTTP client of the relay, for the CLI's remote mode: submit, cancel, list, and follow an
execution's SSE stream, resuming with Last-Event-ID after any break."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from events.errors import (
    CloudOpsError,
    ExecutionEndedError,
    InvalidRequestError,
    UnknownExecutionError,
)
from events.models import RawEvent


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
        if resp.status_code == 409:
            raise ExecutionEndedError(execution_id, "ended")
        if resp.status_code == 422:
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

    def get(self, execution_id: str) -> dict[str, Any]:
        return dict(
            self._check(self._request("GET", f"/api/executions/{execution_id}"), execution_id)
        )

    def list(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = status
        data = self._check(self._request("GET", "/api/executions", params=params))
        return list(data if isinstance(data, list) else data.get("executions", []))

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


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:200]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)
