"""A playbook's `notify` (CONTRACT §10): webhooks told when a run ends with one of `on`.

    notify:
      - on: [failed, timeout]          # optional: every end (failed, timeout, cancelled,
        webhook: https://hooks.example.com/cloudops?token=...          completed) by default

worker.notify delivers them; the run's record spec carries them (`PreparedPlaybook.spec`).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, model_validator

from events.notifications import NotifyTarget, is_http_url, mask_url
from events.vocabulary import TERMINAL_STATUSES, Status
from events.wording import describe
from worker.playbook import validators as v

_ENDS = ", ".join(sorted(TERMINAL_STATUSES))


def statuses(value: object) -> frozenset[Status]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        v.fail(f"must be a list of statuses ({_ENDS}), got {describe(value)}")
    bad = [item for item in items if not isinstance(item, str) or item not in TERMINAL_STATUSES]
    if bad:
        v.fail(f"must list statuses an execution ends with ({_ENDS}), not {describe(bad[0])}")
    return frozenset(Status(item) for item in items)


def webhook(value: object) -> str:
    text = v.nonempty_string(value)
    if not is_http_url(text):
        # Masked: a webhook's query string may hold a token.
        v.fail(f"must be an http:// or https:// URL, got {mask_url(text)!r}")
    return text


class Notify(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    on: Annotated[frozenset[Status], BeforeValidator(statuses)] = TERMINAL_STATUSES
    webhook: Annotated[str, BeforeValidator(webhook)]

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: object) -> object:
        """YAML 1.1 (PyYAML) reads an unquoted `on:` key as the boolean true."""
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if k is True else k): val for k, val in data.items()}
        return data

    def target(self) -> NotifyTarget:
        return NotifyTarget(self.webhook, self.on)
