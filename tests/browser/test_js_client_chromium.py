"""cloudops-events.js in headless Chromium (issue 5's acceptance), against the real relay and a
real worker: `listen('execution_output')` hands over `{event, id, payload}` with the spec's field
names, unlisten stops delivery, several listen() calls in one tick share one socket, and a relay
killed mid-stream is followed by a resume with no gap and no duplicate."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, cast

import pytest
from playwright.sync_api import Page

from tests.browser.conftest import Fleet

pytestmark = [pytest.mark.browser, pytest.mark.integration]

# Runs in a page of the relay's origin that is not the console: the module's own file shown as
# text, under the console's Content-Security-Policy (an API response such as /healthz has
# `default-src 'none'`: no script may run there, by design).
SETUP_JS = """
async ({ token }) => {
  let sockets = 0;
  class CountingWebSocket extends WebSocket {
    constructor(url, protocols) { super(url, protocols); sockets++; }
  }
  const mod = await import('/cloudops-events.js');
  const client = mod.connect({ baseUrl: location.origin, token, WebSocket: CountingWebSocket });
  const s = (window.__s = {
    mod, client, outputs: [], all: [], completed: new Set(), once: [],
    sockets: () => sockets,
  });
  const names = ['execution_started', 'execution_output', 'execution_complete',
    'execution_cancelled', 'playbook_step_start', 'playbook_step_complete'];
  // All at once, as Promise.all: one socket must serve them all.
  const unlistens = await Promise.all([
    mod.listen('execution_output', (e) => s.outputs.push(e)),
    mod.listen('execution_complete', (e) => s.completed.add(e.payload.executionId)),
    ...names.map((n) => mod.listen(n, (e) => s.all.push(e))),
  ]);
  s.unlistenOutput = unlistens[0];
  return sockets;
}
"""


def _setup(page: Page, fleet: Fleet) -> None:
    page.goto(fleet.base_url + "/cloudops-events.js")
    sockets = page.evaluate(SETUP_JS, {"token": fleet.token})
    assert sockets == 1, f"{sockets} WebSockets for listen() calls made in one tick"


def _wait_complete(page: Page, ex: str, timeout_s: float = 30.0) -> None:
    page.wait_for_function("ex => window.__s.completed.has(ex)", arg=ex, timeout=timeout_s * 1000)


def _events_of(page: Page, ex: str, key: str = "outputs") -> list[dict[str, Any]]:
    return cast(
        list[dict[str, Any]],
        page.evaluate(
            "([ex, key]) => window.__s[key].filter((e) => e.payload.executionId === ex)",
            [ex, key],
        ),
    )


def test_listen_payloads_once_and_unlisten(page: Page, fleet: Fleet) -> None:
    _setup(page, fleet)
    ex = fleet.submit("echo alpha; sleep 0.2; echo beta >&2; sleep 0.2; printf gamma")
    _wait_complete(page, ex)
    outputs = _events_of(page, ex)
    assert outputs, "no execution_output delivered"
    for e in outputs:
        assert set(e) == {"event", "id", "payload"}  # what Tauri's listen hands over
        assert e["event"] == "execution_output"
        p = e["payload"]
        assert {"executionId", "output", "stream", "timestamp"} <= set(p)
        assert p["executionId"] == ex and p["stream"] in ("stdout", "stderr")
        assert isinstance(p["output"], str)
        assert datetime.fromisoformat(p["timestamp"]).utcoffset() is not None
    ids = [e["id"] for e in outputs]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    stdout = "".join(e["payload"]["output"] for e in outputs if e["payload"]["stream"] == "stdout")
    stderr = "".join(e["payload"]["output"] for e in outputs if e["payload"]["stream"] == "stderr")
    assert (stdout, stderr) == ("alpha\ngamma", "beta\n")
    every = _events_of(page, ex, "all")
    assert [e["id"] for e in every] == list(range(1, len(every) + 1))
    assert every[0]["event"] == "execution_started"
    assert every[0]["payload"]["commandType"] == "script"
    assert every[-1]["event"] == "execution_complete"
    assert every[-1]["payload"]["status"] == "completed"
    assert every[-1]["payload"]["exitCode"] == 0

    # unlisten: no more execution_output for this handler, the others still hear the run.
    page.evaluate("window.__s.unlistenOutput()")
    after = fleet.submit("echo after unlisten")
    _wait_complete(page, after)
    assert _events_of(page, after) == []
    assert any(e["event"] == "execution_output" for e in _events_of(page, after, "all"))

    # once: the first event only, then it unlistens itself.
    page.evaluate(
        "window.__s.mod.once('execution_output', (e) => window.__s.once.push(e.payload.output))"
    )
    three = fleet.submit("echo 1; sleep 0.2; echo 2; sleep 0.2; echo 3")
    _wait_complete(page, three)
    assert page.evaluate("window.__s.once") == ["1\n"]
    assert page.evaluate("window.__s.sockets()") == 1


def test_relay_killed_mid_stream_resume_without_gap(page: Page, fleet: Fleet) -> None:
    _setup(page, fleet)
    lines = 4000
    ex = fleet.submit(
        f'for i in $(seq 1 {lines}); do echo "line $i"; '
        "if [ $((i % 50)) -eq 0 ]; then sleep 0.05; fi; done"
    )
    page.wait_for_function(
        "ex => window.__s.outputs.filter((e) => e.payload.executionId === ex).length >= 20",
        arg=ex,
        timeout=30_000,
    )
    seen_at_kill = len(_events_of(page, ex))
    t0 = time.monotonic()
    downtime_s = fleet.restart_relay()
    _wait_complete(page, ex, timeout_s=60)
    resumed_s = time.monotonic() - t0
    every = _events_of(page, ex, "all")
    ids = [e["id"] for e in every]
    assert ids == list(range(1, len(ids) + 1)), "a gap or a duplicate"
    outputs = _events_of(page, ex)
    assert [e["id"] for e in outputs] == [
        e["id"] for e in every if e["event"] == "execution_output"
    ]
    text = "".join(e["payload"]["output"] for e in outputs)
    assert text == "".join(f"line {i}\n" for i in range(1, lines + 1))
    assert seen_at_kill < len(outputs), "the output had ended before the relay was killed"
    assert page.evaluate("window.__s.sockets()") >= 2  # it did reconnect
    print(
        f"\nJS client in Chromium: relay killed after {seen_at_kill} output events, back in"
        f" {downtime_s:.1f} s; complete {resumed_s:.1f} s after the kill with ids 1..{ids[-1]}"
        " contiguous"
    )
