"""When a schedule's ticks fall (cron in a time zone, intervals), which tick is due and which
is missed, and one run per tick when two beats tick at the same moment (the claim, not the
lock: redbeat's lock is bypassed here on purpose)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from events.db.schedules import Schedule
from events.errors import ProblemsError
from events.keys import Keys
from events.schedules import Cadence, ScheduleSpec, TickClaim, parse_spec
from events.settings import Settings
from worker.app import client_app
from worker.beat import BeatHooks, CloudopsBeat, StopGate

T0 = datetime(2026, 3, 28, 23, 0, tzinfo=UTC)


def _cadence(body: dict[str, Any], anchor: datetime = T0) -> Cadence:
    return Cadence.of(parse_spec({"playbookName": "p", **body}), anchor)


def test_an_interval_ticks_from_its_anchor_and_a_late_tick_is_missed() -> None:
    c = _cadence({"intervalS": 30})
    assert c.latest(T0 + timedelta(seconds=29)) is None
    assert c.next(T0) == T0 + timedelta(seconds=30)
    assert c.due(T0 + timedelta(seconds=30.5)) == T0 + timedelta(seconds=30)
    assert c.grace_s == 15
    # 20 s late: missed, not replayed; the next one is.
    assert c.due(T0 + timedelta(seconds=50)) is None
    assert c.due(T0 + timedelta(seconds=60.2)) == T0 + timedelta(seconds=60)


def test_cron_ticks_in_its_time_zone_across_a_dst_change() -> None:
    # 09:30 Europe/Paris daily; on 2026-03-29 clocks go 02:00 -> 03:00 (CET to CEST).
    c = _cadence({"cron": "30 9 * * *", "timezone": "Europe/Paris"}, T0 - timedelta(days=3))
    assert c.next(T0) == datetime(2026, 3, 29, 7, 30, tzinfo=UTC)  # 09:30 CEST
    assert c.next(T0 - timedelta(days=2)) == datetime(2026, 3, 27, 8, 30, tzinfo=UTC)  # CET
    assert c.grace_s == 60
    assert c.due(datetime(2026, 3, 29, 7, 30, 40, tzinfo=UTC)) is not None
    assert c.due(datetime(2026, 3, 29, 7, 32, tzinfo=UTC)) is None


def test_a_patch_keeps_the_rest_and_replaces_the_cadence() -> None:
    base = parse_spec({"playbookName": "p", "cron": "* * * * *", "params": {"n": 1}})
    assert base.params == {"n": "1"}
    patched = parse_spec({"intervalS": 5}, base)
    assert (patched.cron, patched.interval_s, patched.params) == (None, 5, {"n": "1"})
    with pytest.raises(ProblemsError) as e:
        parse_spec({"enabled": "no", "timezone": "X/Y"}, base)
    assert {p.loc for p in e.value.problems} == {("enabled",), ("timezone",)}


def _schedule(anchor: datetime) -> Schedule:
    spec = ScheduleSpec("p", {}, None, "UTC", 2, True)
    return Schedule("sc_test", spec, anchor, anchor, anchor, None)


def _recorder(
    fired: list[tuple[str, datetime, str]], name: str
) -> Callable[[Schedule, datetime], None]:
    def fire(row: Schedule, tick: datetime) -> None:
        fired.append((row.id, tick, name))

    return fire


def test_two_beats_ticking_at_once_start_one_run(settings: Settings, rclient: redis.Redis) -> None:
    keys = Keys(settings.key_prefix)
    # Due now: the tick 0.2 s ago.
    row = _schedule(datetime.now(UTC) - timedelta(seconds=2.2))
    fired: list[tuple[str, datetime, str]] = []
    beats = []
    for name in ("a", "b"):
        app = client_app(settings)
        app.conf.update(
            redbeat_redis_url=settings.redis_url,
            redbeat_key_prefix=keys.beat_prefix(),
            redbeat_redis_options={},
        )
        hooks = BeatHooks(
            lambda: [row],
            TickClaim(rclient, keys),
            _recorder(fired, name),
            name,
        )
        beats.append(type("Beat", (CloudopsBeat,), {"hooks": hooks})(app=app, max_interval=1))
    entries = [b.schedule["sc_test"] for b in beats]  # both read the entry before either runs
    waits = [b.maybe_due(e) for b, e in zip(beats, entries, strict=True)]
    assert len(fired) == 1, fired
    assert fired[0][1] == row.anchor + timedelta(seconds=2)
    assert all(0 < w <= 2 for w in waits)
    # The entry's meta names the tick started; a later pass of either starts nothing more.
    again = beats[1].schedule["sc_test"]
    assert again.last_run_at == row.anchor + timedelta(seconds=2)
    beats[0].maybe_due(beats[0].schedule["sc_test"])
    assert len(fired) == 1


def test_a_stop_waits_for_a_run_being_started() -> None:
    gate = StopGate()
    with pytest.raises(SystemExit):
        gate.ask()  # idle: at once
    steps: list[str] = []
    with pytest.raises(SystemExit), gate.start():
        gate.ask()  # mid-start: deferred
        steps.append("record and task both written")
    assert steps == ["record and task both written"]
