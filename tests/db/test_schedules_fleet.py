"""Schedules on a real fleet (issue 17 item 3): a relay, a worker and two `cloudops scheduler`
processes on a private Redis and PostgreSQL.

A 2-second interval schedule for 11 s with two schedulers running gives 4 to 6 runs, one per
tick (their `scheduledAt` all different, each a tick of the schedule); each record names the
schedule, `submittedBy: schedule:<id>` and the version; disabling stops it; bad input is a 422
naming every bad field; with every scheduler killed for a while and one restarted, the ticks
missed meanwhile are not replayed; `max_concurrent: 1` holds when a run outlasts the interval;
`cloudops schedule add|ls|rm --remote`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.db.fleet import TOKEN, Fleet, put_playbook, running_fleet
from tests.helpers import ManagedProcess, cloudops_argv, run_cloudops, start_process, wait_until
from tests.helpers import worker_env as fleet_env

pytestmark = pytest.mark.integration

TICKER = (
    "name: ticker\nparams: {n: '1'}\nsteps:\n  - id: tick\n    command: echo tick {{ params.n }}\n"
)
SLOW = "name: slow\nmax_concurrent: 1\nsteps:\n  - id: nap\n    command: sleep 2.5\n"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[Fleet]:
    with running_fleet(tmp_path_factory.mktemp("schedules"), pg_url, concurrency=3) as f:
        yield f


_SCHEDULER_NUMBERS = itertools.count(1)


class Schedulers:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.procs: list[ManagedProcess] = []

    def start(self) -> ManagedProcess:
        n = next(_SCHEDULER_NUMBERS)
        env = fleet_env(self.fleet.settings, {"CLOUDOPS_DATABASE_URL": self.fleet.database_url})
        log = self.fleet.tmp / f"scheduler-{n}.log"
        proc = start_process(cloudops_argv("scheduler"), env, log, f"scheduler-{n}")
        proc.wait_for_log("beat: Starting", timeout_s=60)
        self.procs.append(proc)
        return proc

    def start_active(self, n: int) -> None:
        for _ in range(n):
            self.start()
        self.wait_active()

    def wait_active(self) -> ManagedProcess:
        """The one holding redbeat's lock (its log says so)."""

        def active() -> ManagedProcess | None:
            live = [p for p in self.procs if p.proc.poll() is None]
            return next((p for p in live if "Acquired lock" in p.log()), None)

        found = wait_until(active, timeout_s=30, what="a scheduler holds the lock")
        assert found is not None
        return found

    def kill_all(self) -> None:
        for p in self.procs:
            p.kill_tree()


@pytest.fixture
def schedulers(fleet: Fleet) -> Iterator[Schedulers]:
    s = Schedulers(fleet)
    yield s
    for p in s.procs:
        p.stop(timeout_s=5)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _runs(api: httpx.Client, schedule_id: str) -> list[dict[str, Any]]:
    resp = api.get("/api/executions", params={"submittedBy": f"schedule:{schedule_id}"})
    assert resp.status_code == 200, resp.text
    return sorted(resp.json(), key=lambda r: r["scheduledAt"])


def _save(api: httpx.Client, name: str, text: str) -> None:
    resp = put_playbook(api, name, text)
    assert resp.status_code in (200, 201), resp.text


def _create(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    resp = api.post("/api/schedules", json=body)
    assert resp.status_code == 201, resp.text
    made: dict[str, Any] = resp.json()
    assert resp.headers["Location"] == f"/api/schedules/{made['id']}"
    return made


def _ticking(api: httpx.Client) -> tuple[dict[str, Any], datetime]:
    """The saved ticker scheduled every 2 s, once two of its runs are seen: the schedule and
    its anchor (when it was made)."""
    made = _create(api, {"playbookName": "ticker", "intervalS": 2})
    wait_until(lambda: len(_runs(api, made["id"])) >= 2, timeout_s=20, what="two runs")
    return made, _at(made["createdAt"])


def _wait_past(at: datetime) -> None:
    """The schedule's own timing: until the clock passes `at`."""
    left = (at - datetime.now(UTC)).total_seconds()
    wait_until(lambda: datetime.now(UTC) >= at, timeout_s=max(left, 0) + 5, what=f"{at}")


def _one_per_tick(runs: list[dict[str, Any]], anchor: datetime, every_s: int) -> None:
    ticks = [_at(r["scheduledAt"]) for r in runs]
    assert len(set(ticks)) == len(ticks), f"two runs for one tick: {ticks}"
    for t in ticks:
        k = (t - anchor).total_seconds() / every_s
        assert abs(k - round(k)) < 1e-3 and k >= 1, (t, anchor)


def test_bad_schedules_are_422_naming_every_field(api: httpx.Client) -> None:
    _save(api, "ticker", TICKER)
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({"playbookName": "ticker", "cron": "61 * * * *"}, {"cron"}),
        ({"playbookName": "ticker", "cron": "* * * * *", "timezone": "Mars/Olympus"}, {"timezone"}),
        ({"playbookName": "ticker", "cron": "* * * * *", "intervalS": 5}, {"cron", "intervalS"}),
        ({"playbookName": "ticker"}, {"cron"}),
        ({"playbookName": "ticker", "intervalS": 0}, {"intervalS"}),
        (
            {"playbookName": "ticker", "intervalS": 0, "timezone": "Nowhere", "x": 1},
            {"intervalS", "timezone", "x"},
        ),
        ({"playbookName": "bad name", "intervalS": "soon"}, {"playbookName", "intervalS"}),
    ]
    for body, fields in cases:
        resp = api.post("/api/schedules", json=body)
        assert resp.status_code == 422, (body, resp.text)
        named = {p["loc"][1] for p in resp.json()["detail"]}
        assert named == fields, (body, resp.json())
    # Its params as a run would check them: a param without a value is named.
    _save(api, "needs", "name: needs\nsteps:\n  - id: a\n    command: echo {{ params.keep }}\n")
    missing = api.post("/api/schedules", json={"playbookName": "needs", "intervalS": 5})
    assert missing.status_code == 422, missing.text
    assert [p["loc"] for p in missing.json()["detail"]] == [["body", "params", "keep"]]
    fine = {"playbookName": "needs", "intervalS": 5, "params": {"keep": 3}, "enabled": False}
    made = _create(api, fine)
    patch = api.patch(f"/api/schedules/{made['id']}", json={"params": {}})
    assert patch.status_code == 422 and patch.json()["detail"][0]["loc"][1:] == ["params", "keep"]
    assert api.delete(f"/api/schedules/{made['id']}").status_code == 204
    # A secret's value is never stored (CONTRACT §10): a schedule cannot keep one. Typed
    # params are checked as a run checks them.
    _save(
        api,
        "typed",
        "name: typed\nparams:\n  api_key: {type: secret}\n  keep: {type: int, max: 9}\n"
        "steps:\n  - id: a\n    command: echo {{ params.keep }} {{ params.api_key }}\n",
    )
    body = {"playbookName": "typed", "intervalS": 5, "params": {"api_key": "s3cr3t-v", "keep": 3}}
    secret = api.post("/api/schedules", json=body)
    assert secret.status_code == 422, secret.text
    assert [p["loc"] for p in secret.json()["detail"]] == [["body", "params", "api_key"]]
    assert "s3cr3t-v" not in secret.text
    body = {"playbookName": "typed", "intervalS": 5, "params": {"keep": 10}}
    too_big = api.post("/api/schedules", json=body)
    assert too_big.status_code == 422, too_big.text
    # The step uses the secret, which a schedule cannot give: a run of it would lack it.
    locs = sorted(p["loc"] for p in too_big.json()["detail"])
    assert locs == [["body", "params", "api_key"], ["body", "params", "keep"]]
    unknown = api.post("/api/schedules", json={"playbookName": "nope", "intervalS": 5})
    assert unknown.status_code == 422 and "playbookName" in unknown.json()["detail"]
    assert api.get("/api/schedules/sc_nope").status_code == 404
    assert api.patch("/api/schedules/sc_nope", json={"enabled": False}).status_code == 404
    assert api.get("/api/schedules").json() == []


def test_two_schedulers_one_run_per_tick_then_disabled(
    api: httpx.Client, schedulers: Schedulers
) -> None:
    _save(api, "ticker", TICKER)
    version = api.get("/api/playbooks/ticker").json()["version"]
    schedulers.start()
    schedulers.start()
    schedulers.wait_active()
    made = _create(api, {"playbookName": "ticker", "params": {"n": "7"}, "intervalS": 2})
    anchor = _at(made["createdAt"])
    assert _at(made["nextRunAt"]) == anchor + timedelta(seconds=2)
    listed = api.get("/api/schedules").json()
    assert [s["id"] for s in listed] == [made["id"]] and "nextRunAt" in listed[0]

    _wait_past(anchor + timedelta(seconds=11))
    patched = api.patch(f"/api/schedules/{made['id']}", json={"enabled": False})
    assert patched.status_code == 200 and patched.json()["enabled"] is False
    assert "nextRunAt" not in patched.json()
    disabled_at = datetime.now(UTC)

    in_window = [
        r for r in _runs(api, made["id"]) if _at(r["scheduledAt"]) <= anchor + timedelta(seconds=11)
    ]
    assert 4 <= len(in_window) <= 6, in_window
    _one_per_tick(in_window, anchor, 2)
    for r in in_window:
        assert r["scheduleId"] == made["id"] and r["submittedBy"] == f"schedule:{made['id']}"
        assert (r["playbookName"], r["playbookVersion"]) == ("ticker", version)
    first = in_window[0]["executionId"]
    wait_until(
        lambda: api.get(f"/api/executions/{first}").json()["status"] == "completed",
        timeout_s=30,
        what="the first scheduled run completes",
    )
    assert api.get(f"/api/executions/{first}/output").text == "tick 7\n"

    # Disabled: three more intervals pass and no tick after the sync (1 s) starts a run.
    _wait_past(disabled_at + timedelta(seconds=6))
    late = [
        r
        for r in _runs(api, made["id"])
        if _at(r["scheduledAt"]) > disabled_at + timedelta(seconds=1.5)
    ]
    assert late == []
    assert api.delete(f"/api/schedules/{made['id']}").status_code == 204
    assert api.get(f"/api/schedules/{made['id']}").status_code == 404


def test_ticks_missed_while_every_scheduler_was_down_are_not_replayed(
    api: httpx.Client, schedulers: Schedulers
) -> None:
    _save(api, "ticker", TICKER)
    schedulers.start_active(2)
    made, anchor = _ticking(api)
    schedulers.kill_all()  # SIGKILL: the lock is not released, it expires (5 s)
    killed_at = datetime.now(UTC)
    before = _runs(api, made["id"])
    _wait_past(killed_at + timedelta(seconds=7))  # three ticks fall with no scheduler
    restarted = schedulers.start()
    schedulers.wait_active()
    assert restarted.proc.poll() is None

    def a_new_run() -> list[dict[str, Any]]:
        runs = _runs(api, made["id"])
        return runs if len(runs) > len(before) else []

    after = wait_until(a_new_run, timeout_s=20, what="a run after the restart")
    _one_per_tick(after, anchor, 2)
    new = [r for r in after if r["executionId"] not in {b["executionId"] for b in before}]
    # The restarted scheduler took the lock 7 s or more after the kill and starts a tick at
    # most its grace (1 s) late: none of the three ticks that fell while all were down.
    for r in new:
        assert _at(r["scheduledAt"]) >= killed_at + timedelta(seconds=6), (r, killed_at)
    assert api.delete(f"/api/schedules/{made['id']}").status_code == 204


def test_a_stopped_scheduler_hands_over_to_the_standby(
    api: httpx.Client, schedulers: Schedulers
) -> None:
    _save(api, "ticker", TICKER)
    schedulers.start_active(2)
    first = schedulers.wait_active()
    made, anchor = _ticking(api)
    first.stop(timeout_s=10)  # SIGTERM: beat's loop ends and releases the lock at once
    assert "Releasing lock" in first.log()
    standby = schedulers.wait_active()
    assert standby is not first
    stopped_at = datetime.now(UTC)
    more = wait_until(
        lambda: [r for r in _runs(api, made["id"]) if _at(r["scheduledAt"]) > stopped_at],
        timeout_s=20,
        what="a run started by the standby",
    )
    standby.wait_for_log(" started ex_", timeout_s=10)
    _one_per_tick(_runs(api, made["id"]), anchor, 2)
    # Taken over within a tick or so: the first tick after the stop is at most 4 s later.
    assert _at(more[0]["scheduledAt"]) - stopped_at <= timedelta(seconds=4)
    assert api.delete(f"/api/schedules/{made['id']}").status_code == 204


def test_max_concurrent_holds_when_a_run_outlasts_its_interval(
    api: httpx.Client, schedulers: Schedulers
) -> None:
    _save(api, "slow", SLOW)
    schedulers.start_active(1)
    made = _create(api, {"playbookName": "slow", "intervalS": 1})

    def three_ended() -> list[dict[str, Any]]:
        runs = [r for r in _runs(api, made["id"]) if r["status"] == "completed"]
        return runs if len(runs) >= 3 else []

    ended = wait_until(three_ended, timeout_s=40, what="three slow runs end")
    assert api.patch(f"/api/schedules/{made['id']}", json={"enabled": False}).status_code == 200
    spans = sorted((_at(r["startedAt"]), _at(r["completedAt"])) for r in ended)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end - timedelta(milliseconds=50), spans
    assert api.delete(f"/api/schedules/{made['id']}").status_code == 204


def test_cli_schedule_add_ls_rm_remote(api: httpx.Client, fleet: Fleet) -> None:
    _save(api, "ticker", TICKER)
    assert fleet.relay is not None
    env = {**os.environ, "CLOUDOPS_API_URL": fleet.relay.base_url, "CLOUDOPS_API_TOKEN": TOKEN}
    env = {k: v for k, v in env.items() if k not in ("CLOUDOPS_REDIS_URL", "CLOUDOPS_DATABASE_URL")}
    add = run_cloudops(
        "schedule",
        "add",
        "ticker",
        "--cron",
        "*/5 * * * *",
        "--timezone",
        "Europe/Paris",
        "--param",
        "n=3",
        env=env,
    )
    assert add.returncode == 0, add.stderr
    sid = add.stdout.strip()
    ls = run_cloudops("schedule", "ls", "--json", env=env)
    rows = [r for r in map(__import__("json").loads, ls.stdout.splitlines()) if r["id"] == sid]
    assert rows and rows[0]["cron"] == "*/5 * * * *" and rows[0]["params"] == {"n": "3"}
    assert _at(rows[0]["nextRunAt"]).minute % 5 == 0
    bad = run_cloudops("schedule", "add", "ticker", "--cron", "nope", env=env)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "cron" in bad.stderr
    assert run_cloudops("schedule", "rm", sid, env=env).returncode == 0
    gone = run_cloudops("schedule", "rm", sid, env=env)
    assert gone.returncode == 2 and len(gone.stderr.strip().splitlines()) == 1, gone.stderr
