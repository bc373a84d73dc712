"""The console across a relay crash: the relay is killed (SIGKILL) and started again on the same
port while a command prints numbered lines; the page reconnects by itself and the terminal
holds every line exactly once, in order."""

from __future__ import annotations

import time

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Fleet
from tests.browser.console_page import ConsolePage
from tests.helpers import wait_until

pytestmark = [pytest.mark.browser, pytest.mark.integration]

LINES = 6000
# About 6 s of output: 120 bursts of 50 lines, 50 ms apart.
NUMBERED = (
    f'for i in $(seq 1 {LINES}); do echo "n $i"; '
    "if [ $((i % 50)) -eq 0 ]; then sleep 0.05; fi; done"
)


def test_relay_restart_mid_stream_no_missing_or_doubled_line(page: Page, fleet: Fleet) -> None:
    ui = ConsolePage(page, fleet)
    ui.sign_in()
    ex = ui.run_command(NUMBERED)
    ui.wait_output_lines(500, timeout_s=30)
    ui.record_connection_states()
    before_kill = len(ui.output_lines())
    t_kill = time.monotonic()
    fleet.kill_relay()  # the command goes on, writing into Redis only
    expect(page.get_by_test_id("connection")).to_have_attribute("data-state", "down")
    ui.screenshot("console-relay-down")
    fleet.start_relay()  # same port
    downtime_s = time.monotonic() - t_kill
    ui.wait_live(timeout_s=20)
    states = ui.connection_states()
    assert states[0] == "live" and "down" in states and states[-1] == "live", states
    t_back = time.monotonic()
    at_reconnect = len(ui.output_lines())
    ui.expect_status("completed", timeout_s=60)
    lines = ui.output_lines()
    expected = [f"n {i}" for i in range(1, LINES + 1)]
    assert len(lines) == len(set(lines)), "a line is doubled"
    assert lines == expected
    assert before_kill < LINES, "the relay was killed after the output had ended"
    expect(ui.row(ex)).to_have_attribute("data-status", "completed")
    print(
        f"\nconsole resume: relay killed at {before_kill} lines, back after {downtime_s:.1f} s;"
        f" {at_reconnect} lines on screen at reconnect,"
        f" completed {time.monotonic() - t_back:.1f} s later with {len(lines)} lines, none"
        " missing or doubled"
    )


def test_page_opened_mid_run_replays_from_the_start(page: Page, fleet: Fleet) -> None:
    """An execution already running when the page opens: its history first, then live."""
    ex = fleet.submit(NUMBERED)
    with fleet.api() as api:
        wait_until(
            lambda: "n 300\n" in api.get(f"/api/executions/{ex}/output").text,
            30,
            0.05,
            what="300 lines of output",
        )
    ui = ConsolePage(page, fleet)
    page.goto(f"{fleet.base_url}/#{ex}")
    page.get_by_test_id("token-input").fill(fleet.token)
    page.get_by_test_id("token-submit").click()
    expect(page.get_by_test_id("execution-id")).to_have_text(ex)
    ui.expect_status("completed", timeout_s=60)
    assert ui.output_lines() == [f"n {i}" for i in range(1, LINES + 1)]
