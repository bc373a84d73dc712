"""Tell an ended execution's webhooks (CONTRACT §10), never in the execution's own path.

`finish()` (every ending passes through it) queues one `cloudops.notify` task when a webhook
wants the execution's status (`notify_later`). The task (worker.tasks) runs delivery rounds: one
POST to each webhook still to be told, each attempt recorded (events.notifications), and Celery
retries the ones that failed with exponential backoff and jitter, within NOTIFY_WINDOW_S.
Embedded mode runs the same rounds in a thread of its own (`notify_in_thread`).

The POST itself is cli/'s (worker/ knows nothing of HTTP): a `Poster`, given to each process
once with `use_poster` before any task runs.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from events.models import utc_now
from events.notifications import (
    SIGNATURE_HEADER,
    SPEC_NOTIFY,
    Attempt,
    AttemptStore,
    NotifyTarget,
    mask_url,
    notification_body,
    sign,
    targets,
)
from events.vocabulary import RecordField, Status
from worker.runtime import Runtime
from worker.taskqueue import TaskQueue

log = logging.getLogger(__name__)
F = RecordField

# Retries stop within this long of the first attempt (CONTRACT §10), each at most MAX_BACKOFF_S
# after the one before; one POST may take POST_TIMEOUT_S.
NOTIFY_WINDOW_S = 600.0
MAX_BACKOFF_S = 120.0
POST_TIMEOUT_S = 10.0


class Poster(Protocol):
    def __call__(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> int:
        """POST `body` to `url`; the response's status code. Raises on a connection error or
        a timeout."""
        ...


def _no_poster(url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> int:
    raise RuntimeError("this process has no HTTP client for webhooks (start it with cloudops)")


_poster: Poster = _no_poster


def use_poster(poster: Poster) -> None:
    """How this process POSTs (the composition root's, before a worker forks its pool)."""
    global _poster
    _poster = poster


def retry_delays_s(base_s: float) -> list[float]:
    """The wait before each retry: `base_s`, doubling, at most MAX_BACKOFF_S, as many as fit in
    NOTIFY_WINDOW_S with every attempt taking its whole POST_TIMEOUT_S. Jitter only shortens
    them, so the last attempt ends within the window."""
    delays: list[float] = []
    delay_s = min(base_s, MAX_BACKOFF_S)
    # After this retry: len(delays) + 2 attempts.
    while sum(delays) + delay_s + POST_TIMEOUT_S * (len(delays) + 2) <= NOTIFY_WINDOW_S:
        delays.append(delay_s)
        delay_s = min(delay_s * 2, MAX_BACKOFF_S)
    return delays


def next_delay_s(base_s: float, retries: int, left: Sequence[int] | None) -> float | None:
    """How long to wait before retry number `retries + 1`, or None when nothing is left to
    deliver or the window is over. Equal jitter: half the delay, plus up to the other half at
    random, so that the retries of many executions to one receiver spread out."""
    delays = retry_delays_s(base_s)
    if left == [] or retries >= len(delays):
        return None
    delay_s = delays[retries]
    return delay_s / 2 + random.uniform(0, delay_s / 2)


def _targets_of(rt: Runtime, spec_text: str | None) -> list[NotifyTarget]:
    # A playbook's spec can be large: parse it only when it may hold a `notify` key.
    has_notify = spec_text is not None and f'"{SPEC_NOTIFY}"' in spec_text
    spec = json.loads(spec_text) if has_notify and spec_text else None
    return targets(spec, rt.settings.notify_webhooks)


def notify_later(
    rt: Runtime,
    execution_id: str,
    tasks: TaskQueue,
    status_and_spec: Sequence[str | None] | None = None,
) -> None:
    """Queue the notification of an ended execution if a webhook may want it.
    `status_and_spec`: the record's STATUS and SPEC when the caller already read them. A
    failing Redis or broker costs the notification here, never the execution: it has ended."""
    try:
        status, spec_text = status_and_spec or rt.records.fields(execution_id, F.STATUS, F.SPEC)
        found = _targets_of(rt, spec_text)
        # A status not yet terminal (its last publish still on its way): the task waits for it.
        ended = Status(status) if status and Status(status).terminal else None
        if any(ended is None or t.wants(ended) for t in found):
            tasks.send_notify(execution_id)
    except Exception:
        log.warning("notification of %s not queued", execution_id, exc_info=True)


def attempt_store(rt: Runtime) -> AttemptStore:
    return AttemptStore(rt.redis, rt.keys, rt.settings.history_ttl_s)


def notify_round(
    rt: Runtime, execution_id: str, pending: Sequence[int] | None, attempt: int
) -> list[int] | None:
    """POST to each webhook in `pending` (indices into events.notifications.targets; None: each
    that wants the execution's status), once. Returns those to try again, or None when the
    record does not say the execution ended yet (nothing was sent: the round is retried)."""
    status, spec_text = rt.records.fields(execution_id, F.STATUS, F.SPEC)
    if not status:
        return []  # the record expired: nothing left to tell
    if not Status(status).terminal:
        return None if pending is None else list(pending)
    found = _targets_of(rt, spec_text)
    if pending is None:
        pending = [i for i, t in enumerate(found) if t.wants(Status(status))]
    body = notification_body(rt.records.raw(execution_id), rt.settings.public_url)
    headers = {"Content-Type": "application/json", "User-Agent": "cloudops-notify"}
    if rt.settings.webhook_secret:
        headers[SIGNATURE_HEADER] = sign(body, rt.settings.webhook_secret)
    store = attempt_store(rt)
    return [
        i
        for i in pending
        if i < len(found)
        and not _deliver(store, execution_id, found[i].webhook, attempt, body, headers)
    ]


def _deliver(
    store: AttemptStore,
    execution_id: str,
    url: str,
    attempt: int,
    body: bytes,
    headers: Mapping[str, str],
) -> bool:
    """One POST, recorded; True if delivered (a 2xx answer)."""
    shown = mask_url(url)
    status_code: int | None = None
    error: str | None = None
    try:
        status_code = _poster(url, body, headers, POST_TIMEOUT_S)
    except Exception as e:
        # The message of an HTTP client's error may quote the URL: never its query.
        error = f"{type(e).__name__}: {e}".replace(url, shown)[:500]
    delivered = status_code is not None and 200 <= status_code < 300
    if status_code is not None and not delivered:
        error = f"HTTP {status_code}"
    done = Attempt(
        at=utc_now(),
        url=shown,
        attempt=attempt,
        status_code=status_code,
        error=error,
        delivered=delivered,
    )
    try:
        store.add(execution_id, done)
    except Exception:
        log.warning("attempt %d of %s to %s not recorded", attempt, execution_id, shown)
    if delivered:
        log.info("execution %s: notified %s (attempt %d)", execution_id, shown, attempt)
    else:
        log.warning(
            "execution %s: %s not notified (attempt %d): %s", execution_id, shown, attempt, error
        )
    return delivered


def notify_in_thread(
    rt: Runtime, execution_id: str, first_round: Callable[[], None] = lambda: None
) -> threading.Thread:
    """Embedded mode: the task's rounds and retries in a daemon thread, for as long as this
    process lives; `first_round` is called once the first round is over (or was not needed)."""

    def run() -> None:
        try:
            if not attempt_store(rt).claim(execution_id):
                return
            left: list[int] | None = None
            retries = 0
            while True:
                left = notify_round(rt, execution_id, left, retries + 1)
                if retries == 0:
                    first_round()
                delay_s = next_delay_s(rt.settings.notify_backoff_s, retries, left)
                if delay_s is None:
                    return
                time.sleep(delay_s)
                retries += 1
        except Exception:
            log.exception("notification of %s failed", execution_id)
        finally:
            first_round()  # again, harmless: it must be called however the thread ends

    thread = threading.Thread(target=run, name=f"cloudops-notify-{execution_id}", daemon=True)
    thread.start()
    return thread
