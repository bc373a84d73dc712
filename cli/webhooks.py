"""The HTTP side of webhook notifications (worker.notify decides what, when and how often)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import httpx

from worker.notify import use_poster


def post_webhook(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> int:
    """One POST; its status code. A redirect is not followed (it counts as not delivered):
    the signed body goes only where it was configured to go."""
    with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
        return client.post(url, content=body, headers=dict(headers)).status_code


def install() -> None:
    """Give this process's notification rounds their HTTP client (before a worker forks).
    httpx logs each request's full URL at INFO (httpcore at DEBUG): a webhook's query string may
    hold its token, so theirs stay quiet (worker.notify logs each attempt, masked)."""
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    use_poster(post_webhook)
