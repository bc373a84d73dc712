"""Schedules (CONTRACT §10): what one is, when its ticks fall, and one run per tick.

A schedule runs a saved playbook with params on a `cron` expression in a time zone, or every
`intervalS` seconds. Its ticks are instants computed from the definition alone, never from when
a scheduler last woke up: an interval's ticks are `anchor + k * intervalS` (the anchor is when
it was created), a cron's are croniter's in its zone. So every scheduler agrees on which tick is
due, and `TickClaim` (one SET NX per schedule and tick) lets exactly one of them start its run,
however many schedulers run and whichever holds celery-redbeat's lock.

A tick is started only while it is fresh: at most `grace_s` late. One that passed while no
scheduler ran (or none held the lock) is skipped, never replayed (`Cadence.due`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from events.db.playbooks import check_name
from events.errors import InvalidRequestError, Problem, ProblemsError
from events.keys import Keys

# A tick later than this fraction of its period (bounded below and above) counts as missed.
GRACE_FRACTION = 0.5
MIN_GRACE_S = 1.0
MAX_GRACE_S = 60.0
# How long a tick's claim is kept: longer than any scheduler could still see the tick as due.
CLAIM_TTL_S = 3600
MAX_INTERVAL_S = 366 * 24 * 3600

FIELDS = ("playbookName", "params", "cron", "timezone", "intervalS", "enabled")


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule's definition, checked: exactly one of `cron` and `interval_s`."""

    playbook_name: str
    params: dict[str, str]
    cron: str | None
    timezone: str
    interval_s: int | None
    enabled: bool

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "playbookName": self.playbook_name,
            "params": self.params,
            "timezone": self.timezone,
            "enabled": self.enabled,
        }
        if self.cron is not None:
            out["cron"] = self.cron
        if self.interval_s is not None:
            out["intervalS"] = self.interval_s
        return out


def _check_cron(expr: object, problems: list[Problem]) -> str | None:
    if not isinstance(expr, str) or not croniter.is_valid(expr) or len(expr.split()) != 5:
        problems.append(Problem(("cron",), f"cron: {expr!r} is not a 5-field cron expression"))
        return None
    return expr


def _check_zone(zone: object, problems: list[Problem]) -> str:
    try:
        if not isinstance(zone, str) or not zone:
            raise ValueError
        ZoneInfo(zone)
    except (ValueError, ZoneInfoNotFoundError):
        problems.append(Problem(("timezone",), f"timezone: unknown time zone {zone!r}"))
        return "UTC"
    return zone


def _check_interval(value: object, problems: list[Problem]) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(Problem(("intervalS",), "intervalS: must be an integer"))
    elif not 1 <= value <= MAX_INTERVAL_S:
        problems.append(Problem(("intervalS",), f"intervalS: must be 1 to {MAX_INTERVAL_S}"))
    else:
        return value
    return None


def _check_params(value: object, problems: list[Problem]) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        problems.append(Problem(("params",), "params: must be an object"))
        return {}
    out: dict[str, str] = {}
    for k, v in value.items():
        if isinstance(v, dict | list) or v is None:
            problems.append(Problem(("params", k), f"params.{k}: must be a scalar"))
        else:
            out[k] = str(v).lower() if isinstance(v, bool) else str(v)
    return out


def _check_name(value: object, problems: list[Problem]) -> str:
    try:
        if not isinstance(value, str):
            raise InvalidRequestError("playbookName", "is required (a saved playbook's name)")
        return check_name(value, "playbookName")
    except InvalidRequestError as e:
        problems.append(Problem(("playbookName",), str(e)))
        return ""


def parse_spec(body: Mapping[str, Any], base: ScheduleSpec | None = None) -> ScheduleSpec:
    """A POST body (or, with `base`, a PATCH body over it) as a checked ScheduleSpec.
    ProblemsError names every bad field (CONTRACT §3): an unknown one, a bad cron, an unknown
    time zone, both or neither of `cron` and `intervalS`, `intervalS` < 1."""
    problems: list[Problem] = [
        Problem((k,), f"{k}: unknown field (one of {', '.join(FIELDS)})")
        for k in body
        if k not in FIELDS
    ]
    merged: dict[str, Any] = base.wire() if base is not None else {"timezone": "UTC"}
    if base is not None and ("cron" in body or "intervalS" in body):
        # A PATCH naming one cadence replaces the other.
        merged.pop("cron", None)
        merged.pop("intervalS", None)
    merged |= {k: v for k, v in body.items() if k in FIELDS and v is not None}
    name = _check_name(merged.get("playbookName"), problems)
    params = _check_params(merged.get("params", {}), problems)
    zone = _check_zone(merged.get("timezone"), problems)
    enabled = merged.get("enabled", True)
    if not isinstance(enabled, bool):
        problems.append(Problem(("enabled",), "enabled: must be true or false"))
    cron = interval = None
    if ("cron" in merged) == ("intervalS" in merged):
        both = ("cron", "intervalS") if "cron" in merged else ("cron",)
        problems += [Problem((f,), f"{f}: give exactly one of cron and intervalS") for f in both]
    elif "cron" in merged:
        cron = _check_cron(merged["cron"], problems)
    else:
        interval = _check_interval(merged["intervalS"], problems)
    if problems:
        raise ProblemsError(problems)
    return ScheduleSpec(name, params, cron, zone, interval, bool(enabled))


@dataclass(frozen=True)
class Cadence:
    """When a schedule's ticks fall: `latest(now)`, `next(now)`, `due(now)`."""

    cron: str | None
    timezone: str
    interval_s: int | None
    anchor: datetime

    @classmethod
    def of(cls, spec: ScheduleSpec, anchor: datetime) -> Cadence:
        return cls(spec.cron, spec.timezone, spec.interval_s, anchor)

    def _zoned(self, now: datetime) -> datetime:
        return now.astimezone(ZoneInfo(self.timezone))

    def latest(self, now: datetime) -> datetime | None:
        """The last tick at or before `now` (None before the first)."""
        if self.interval_s is not None:
            k = int((now - self.anchor).total_seconds() // self.interval_s)
            return self.anchor + timedelta(seconds=k * self.interval_s) if k >= 1 else None
        assert self.cron is not None
        # croniter's get_prev is strictly before: ask from just after `now`.
        it = croniter(self.cron, self._zoned(now) + timedelta(microseconds=1))
        prev: datetime = it.get_prev(datetime).astimezone(UTC)
        return prev if prev > self.anchor else None

    def next(self, now: datetime) -> datetime:
        """The first tick after `now`."""
        if self.interval_s is not None:
            start = max(now, self.anchor)
            k = int((start - self.anchor).total_seconds() // self.interval_s) + 1
            return self.anchor + timedelta(seconds=k * self.interval_s)
        assert self.cron is not None
        nxt: datetime = croniter(self.cron, self._zoned(max(now, self.anchor))).get_next(datetime)
        return nxt.astimezone(UTC)

    @property
    def grace_s(self) -> float:
        if self.interval_s is not None:
            period = float(self.interval_s)
        else:
            assert self.cron is not None
            it = croniter(self.cron, self._zoned(self.anchor))
            first = it.get_next(datetime)
            period = (it.get_next(datetime) - first).total_seconds()
        return min(max(period * GRACE_FRACTION, MIN_GRACE_S), MAX_GRACE_S)

    def due(self, now: datetime) -> datetime | None:
        """The tick to start now: the latest one, if at most `grace_s` late; else None (none
        yet, or missed: not replayed)."""
        tick = self.latest(now)
        if tick is None or (now - tick).total_seconds() > self.grace_s:
            return None
        return tick


class SetNx(Protocol):
    def set(self, name: str, value: str, *, nx: bool, ex: int) -> Any: ...


class TickClaim:
    """One run per schedule and tick: the first scheduler to claim a tick starts its run."""

    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    def claim(self, schedule_id: str, tick: datetime, by: str) -> bool:
        key = self.keys.schedule_tick(schedule_id, iso(tick))
        return bool(self.redis.set(key, by, nx=True, ex=CLAIM_TTL_S))
