"""The console as the tests drive it: one method per user action, one per thing read back.
Every wait goes through Playwright's auto-waiting `expect` or `wait_for_function`, with a
timeout; nothing sleeps."""

from __future__ import annotations

import re
import time
from typing import Any, cast

from playwright.sync_api import Locator, Page, expect

from tests.browser.conftest import ARTIFACTS, Fleet

LINES = '[data-testid="terminal-lines"]'
# The console's own lines (step headers, the summary) are `.meta`; the rest is output.
OUTPUT_LINES = f"{LINES} .l:not(.meta)"

# Records every data-status a playbook step element takes (the attribute's old values, plus its
# value now when read), so that short-lived states are not missed between two polls.
STEP_HISTORY_JS = """
() => {
  window.__stepHistory = {};
  const box = document.querySelector('[data-testid="playbook-steps"]');
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.type !== 'attributes' || !r.target.dataset.stepId) continue;
      const h = (window.__stepHistory[r.target.dataset.stepId] ||= []);
      if (r.oldValue !== null) h.push(r.oldValue);
    }
  }).observe(box, {
    subtree: true, attributes: true, attributeFilter: ['data-status'], attributeOldValue: true,
  });
}
"""

READ_STEP_HISTORY_JS = """
() => {
  const out = {};
  for (const li of document.querySelectorAll('[data-testid="step"]')) {
    const h = [...(window.__stepHistory[li.dataset.stepId] || []), li.dataset.status];
    out[li.dataset.stepId] = h.filter((s, i) => i === 0 || s !== h[i - 1]);
  }
  return out;
}
"""


# Every state the connection indicator takes, in order.
CONNECTION_HISTORY_JS = """
() => {
  const box = document.querySelector('[data-testid="connection"]');
  window.__connectionStates = [box.dataset.state];
  new MutationObserver(() => window.__connectionStates.push(box.dataset.state)).observe(box, {
    attributes: true, attributeFilter: ['data-state'],
  });
}
"""


class ConsolePage:
    def __init__(self, page: Page, fleet: Fleet) -> None:
        self.page = page
        self.fleet = fleet

    # -- actions ---------------------------------------------------------------------------
    def sign_in(self, token: str | None = None) -> None:
        self.page.goto(self.fleet.base_url + "/")
        self.page.get_by_test_id("token-input").fill(token or self.fleet.token)
        self.page.get_by_test_id("token-submit").click()
        expect(self.page.get_by_test_id("app")).to_be_visible(timeout=10_000)
        self.wait_live()
        expect(self.page.locator("body")).to_have_attribute("data-ready", "true", timeout=10_000)

    def wait_live(self, timeout_s: float = 15.0) -> None:
        expect(self.page.get_by_test_id("connection")).to_have_attribute(
            "data-state", "live", timeout=timeout_s * 1000
        )

    def run_command(self, command: str, **fields: str) -> str:
        """Fill the command form (fields: timeout, working_dir, aws_profile, aws_region,
        command_type), press Run, return the id of the execution it opened."""
        page = self.page
        page.get_by_test_id("tab-command").click()
        page.get_by_test_id("command-input").fill(command)
        if "command_type" in fields:
            page.get_by_test_id("command-type").select_option(fields.pop("command_type"))
        if fields.keys() & {"working_dir", "aws_profile", "aws_region"}:
            page.locator("details.options summary").click()
        for name, value in fields.items():
            page.get_by_test_id(name.replace("_", "-")).fill(value)
        before = page.get_by_test_id("execution-id").text_content() or ""
        page.get_by_test_id("run-command").click()
        return self._opened_after(before)

    def run_playbook(self, yaml_text: str, params: str = "") -> str:
        page = self.page
        page.get_by_test_id("tab-playbook").click()
        page.get_by_test_id("playbook-yaml").fill(yaml_text)
        page.get_by_test_id("playbook-params").fill(params)
        before = page.get_by_test_id("execution-id").text_content() or ""
        page.get_by_test_id("run-playbook").click()
        return self._opened_after(before)

    def _opened_after(self, before: str) -> str:
        ex_id = self.page.get_by_test_id("execution-id")
        expect(ex_id).not_to_have_text(re.compile("^" + re.escape(before) + "$"), timeout=15_000)
        expect(ex_id).to_have_text(re.compile(r"^\S+$"))
        return (ex_id.text_content() or "").strip()

    def open_execution(self, execution_id: str) -> None:
        self.page.locator(
            f'[data-testid="execution-row"][data-execution-id="{execution_id}"]'
        ).click()
        expect(self.page.get_by_test_id("execution-id")).to_have_text(execution_id)

    def cancel(self) -> None:
        self.page.get_by_test_id("cancel-execution").click()

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=ARTIFACTS / f"{name}.png")

    # -- reading back ----------------------------------------------------------------------
    @property
    def status(self) -> Locator:
        return self.page.get_by_test_id("execution-status")

    def row(self, execution_id: str) -> Locator:
        return self.page.locator(
            f'[data-testid="execution-row"][data-execution-id="{execution_id}"]'
        )

    def expect_status(self, status: str, timeout_s: float = 30.0) -> None:
        expect(self.status).to_have_attribute("data-status", status, timeout=timeout_s * 1000)

    def output_line(self, text: str) -> Locator:
        return self.page.locator(OUTPUT_LINES, has_text=text)

    def output_lines(self) -> list[str]:
        """The text of every output line in the page (the console's own lines left out)."""
        return cast(
            list[str],
            self.page.eval_on_selector_all(OUTPUT_LINES, "els => els.map(e => e.textContent)"),
        )

    def expect_output(self, lines: list[str], timeout_s: float = 15.0) -> None:
        """Wait until the output lines on screen are exactly `lines`."""
        expect(self.page.locator(OUTPUT_LINES)).to_have_text(lines, timeout=timeout_s * 1000)

    def dom_line_count(self) -> int:
        return int(self.page.eval_on_selector(LINES, "e => e.querySelectorAll('.l').length"))

    def wait_output_lines(self, at_least: int, timeout_s: float = 30.0) -> None:
        self.page.wait_for_function(
            f"n => document.querySelectorAll('{OUTPUT_LINES}').length >= n",
            arg=at_least,
            timeout=timeout_s * 1000,
        )

    def computed(self, locator: Locator, prop: str) -> str:
        return str(locator.evaluate(f"e => getComputedStyle(e).{prop}"))

    def record_step_history(self) -> None:
        self.page.evaluate(STEP_HISTORY_JS)

    def step_history(self) -> dict[str, list[str]]:
        return cast(dict[str, list[str]], self.page.evaluate(READ_STEP_HISTORY_JS))

    def record_connection_states(self) -> None:
        self.page.evaluate(CONNECTION_HISTORY_JS)

    def connection_states(self) -> list[str]:
        return cast(list[str], self.page.evaluate("window.__connectionStates"))

    def timed_evaluate(self, expression: str) -> tuple[Any, float]:
        """Evaluate in the page; returns the value and the round trip in seconds."""
        t0 = time.perf_counter()
        value = self.page.evaluate(expression)
        return value, time.perf_counter() - t0


def rgb(css_colour: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"rgba?\((\d+), (\d+), (\d+)(?:, [\d.]+)?\)", css_colour)
    assert m, css_colour
    return int(m[1]), int(m[2]), int(m[3])
