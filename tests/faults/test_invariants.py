"""The checker itself, on hand-made histories in fakeredis: "0 violated" must mean something.

Every invariant is shown to catch the violation it is for, and a known bug to be counted apart.
Uses a ledger of its own, so that the suite's summary counts only real faults and checks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest

from events.keys import Keys
from events.wire import RawEvent
from tests.faults.invariants import Checker, KnownBug, Ledger, Tracked, read_history

pytestmark = pytest.mark.fault

KEYS = Keys("inv")
EX = "ex_checked"


def envelope(n: int, event: str, **payload: Any) -> str:
    return json.dumps(
        {"event": event, "id": n, "executionId": EX, "payload": {"executionId": EX, **payload}}
    )


def story(stdout: str, stderr: str = "", status: str = "completed") -> list[str]:
    """started, one output event per line (stderr after stdout), complete."""
    events = ["execution_started"]
    payloads: list[dict[str, Any]] = [{}]
    for stream, text in (("stdout", stdout), ("stderr", stderr)):
        for line in text.splitlines(keepends=True):
            events.append("execution_output")
            payloads.append({"output": line, "stream": stream})
    events.append("execution_complete")
    payloads.append({"status": status})
    return [
        envelope(n, e, **p) for n, (e, p) in enumerate(zip(events, payloads, strict=True), start=1)
    ]


@pytest.fixture
def client() -> Iterator[fakeredis.FakeRedis]:
    c = fakeredis.FakeRedis()
    yield c
    c.close()


def store(client: fakeredis.FakeRedis, envelopes: list[str], record_status: str) -> None:
    for n, data in enumerate(envelopes, start=1):
        # Entry ids as the publish script makes them, except where a test left a hole.
        client.xadd(KEYS.history(EX), {"e": data}, id=f"{json.loads(data)['id'] or n}-0")
    client.hset(KEYS.record(EX), mapping={"executionId": EX, "status": record_status})


def tracked(tmp_path: Path, stdout: str, stderr: str = "", **kw: Any) -> Tracked:
    (tmp_path / "stdout").write_text(stdout)
    (tmp_path / "stderr").write_text(stderr)
    return Tracked(EX, tmp_path, "no-such-marker-x1", **kw)


def run(
    client: fakeredis.FakeRedis,
    t: Tracked,
    followed: list[RawEvent] | None = None,
    known: list[KnownBug] | None = None,
) -> Ledger:
    """Check one execution; the ledger says what was found (check() also raises on it)."""
    ledger = Ledger()
    checker = Checker(client, KEYS, ledger)
    try:
        checker.check(
            [t],
            marker="no-such-marker",
            followed=None if followed is None else {EX: followed},
            timeout_s=0.2,
            known=known or [],
        )
    except AssertionError:
        assert ledger.violations, "raised without a violation"
    else:
        assert not ledger.violations, "a violation did not fail the check"
    return ledger


def history_events(client: fakeredis.FakeRedis) -> list[RawEvent]:
    return read_history(client, KEYS, EX).events


LINES = "one é\ntwo ✓\nthree 𝄞\n"


def test_a_clean_completed_execution_passes_every_check(
    client: fakeredis.FakeRedis, tmp_path: Path
) -> None:
    store(client, story(LINES, "err\n"), "completed")
    ledger = run(client, tracked(tmp_path, LINES, "err\n"), followed=history_events(client))
    assert ledger.violations == []
    assert ledger.checks == 8  # complete, ids, stdout, stderr, record, follower, outcome, procs


@pytest.mark.parametrize(
    ("envelopes", "record", "expected"),
    [
        (story(LINES)[:-1], "running", "0 execution_complete"),
        (
            [*story(LINES)[:2], story(LINES)[3]],
            "completed",
            "ids not contiguous",
        ),
        (story("one é\ntwo ✗\nthree 𝄞\n"), "completed", "stdout (completed) is not equal"),
        (story(LINES), "running", "record status 'running'"),
        (story(LINES, status="failed"), "failed", "ended 'failed'"),
    ],
    ids=["no-complete", "gap", "output-differs", "record-running", "wrong-outcome"],
)
def test_each_violation_is_caught(
    client: fakeredis.FakeRedis,
    tmp_path: Path,
    envelopes: list[str],
    record: str,
    expected: str,
) -> None:
    store(client, envelopes, record)
    ledger = run(client, tracked(tmp_path, LINES))
    assert any(expected in v for v in ledger.violations), ledger.violations


def test_two_completes_are_caught(client: fakeredis.FakeRedis, tmp_path: Path) -> None:
    envs = story(LINES)
    envs.append(envelope(len(envs) + 1, "execution_complete", status="completed"))
    store(client, envs, "completed")
    ledger = run(client, tracked(tmp_path, LINES))
    assert any("2 execution_complete" in v for v in ledger.violations)


def test_a_cancelled_execution_needs_a_prefix_of_the_file(
    client: fakeredis.FakeRedis, tmp_path: Path
) -> None:
    store(client, story("one é\n", status="cancelled"), "cancelled")
    ok = run(client, tracked(tmp_path, LINES, expect=frozenset({"cancelled"})))
    assert ok.violations == []
    (tmp_path / "stdout").write_text("one e\n")
    bad = run(client, tracked(tmp_path, "one e\n", expect=frozenset({"cancelled"})))
    assert any("is not a prefix" in v for v in bad.violations)


def test_a_follower_that_got_an_event_twice_is_caught(
    client: fakeredis.FakeRedis, tmp_path: Path
) -> None:
    store(client, story(LINES), "completed")
    events = history_events(client)
    ledger = run(client, tracked(tmp_path, LINES), followed=[*events[:2], *events[1:]])
    assert any("the follower got" in v for v in ledger.violations)


def test_a_known_bug_is_counted_apart(client: fakeredis.FakeRedis, tmp_path: Path) -> None:
    store(client, story(LINES), "running")
    bug = KnownBug(("record status 'running'",), "a reported bug")
    ledger = run(client, tracked(tmp_path, LINES), known=[bug])
    assert ledger.violations == []
    assert [b for b, _ in ledger.known] == [bug]
