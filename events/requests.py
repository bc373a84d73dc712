"""The shapes of a request to start an execution, shared by the relay and the worker side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic.alias_generators import to_snake

from events.errors import InvalidRequestError
from events.vocabulary import RecordField

# A playbook as YAML text or as an already parsed object, and the run's params.
PlaybookSource = str | Mapping[str, Any]
Params = Mapping[str, str] | None
# Where a playbook given in a request body came from, for located error messages.
REQUEST_SOURCE = "<request>"


def split_pair(arg: str, field: str, key: str = "NAME") -> tuple[str, str]:
    """`K=V` (`--param`, `--label`) split at its first `=`; InvalidRequestError names
    `field` when there is none."""
    name, sep, value = arg.partition("=")
    if not sep:
        raise InvalidRequestError(field, f"expected {key}=VALUE, got {arg!r}")
    return name, value


@dataclass(frozen=True)
class SavedRef:
    """A run of a saved playbook (CONTRACT §10): the name and version its record names."""

    name: str
    version: int

    def record_fields(self) -> dict[str, str]:
        return {
            RecordField.PLAYBOOK_NAME: self.name,
            RecordField.PLAYBOOK_VERSION: str(self.version),
        }


@dataclass(frozen=True)
class ScheduledTick:
    """A run a schedule started (CONTRACT §10): the schedule and the tick (RFC 3339, UTC)."""

    schedule_id: str
    at: str

    @property
    def submitter(self) -> str:
        return f"schedule:{self.schedule_id}"


# `cloudops run --targets`: the keys it takes, and the playbook key each one fills.
_TARGET_KEYS = {"queue": "queue", "hosts": "hosts", "label": "labels"}


def parse_targets(args: Sequence[str]) -> dict[str, Any]:
    """`--targets queue=web`, `hosts=a,b` or `label=k=v` (repeatable, labels add up) as a
    playbook step's `targets`; InvalidRequestError (`targets`) names the bad one."""
    out: dict[str, Any] = {}
    for arg in args:
        kind, value = split_pair(arg, "targets", "queue|hosts|label")
        key = _TARGET_KEYS.get(kind)
        if key is None or not value:
            raise InvalidRequestError(
                "targets", f"expected queue=Q, hosts=A,B or label=K=V, got {arg!r}"
            )
        if (out and key not in out) or (key != "labels" and key in out):
            raise InvalidRequestError(
                "targets", "give one of queue, hosts or label (labels add up)"
            )
        if key == "queue":
            out[key] = value
        elif key == "hosts":
            out[key] = [h for h in value.split(",") if h]
        else:
            name, label = split_pair(value, "targets", "label=KEY")
            out.setdefault(key, {})[name] = label
    return out


def command_playbook(
    command: str, options: Mapping[str, Any], targets: Mapping[str, Any]
) -> dict[str, Any]:
    """An ad hoc command with `targets` (CONTRACT §7) as the one-step playbook it runs as;
    `options` in their wire form (`workingDir`, `timeout`, ...) become the step's."""
    step: dict[str, Any] = {"id": "run", "name": command[:80], "command": command}
    step |= {to_snake(k): v for k, v in options.items() if v is not None}
    return {"name": command[:80], "steps": [step | {"targets": dict(targets)}]}
