"""The web console in headless Chromium against a real relay, worker and Redis: the token gate,
a command started from the form and seen live, stderr and ANSI colours, a playbook's steps,
cancel, and the notification at the end."""

from __future__ import annotations

import random
import re
import time
from urllib.parse import urlparse

import pytest
from playwright.sync_api import Locator, Page, Request, expect

from tests.browser.conftest import Fleet
from tests.browser.console_page import ConsolePage, rgb
from tests.helpers import live_pids_with, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.integration]

# The Notification API, as a page granted permission sees it; records what the console shows.
FAKE_NOTIFICATION_JS = """
window.__notifications = [];
window.Notification = class {
  static permission = 'granted';
  static requestPermission() { return Promise.resolve('granted'); }
  constructor(title, options) { window.__notifications.push({ title, body: options?.body }); }
};
"""

STATIC_PATHS = {
    "/",
    "/cloudops-events.js",
    "/static/console.css",
    "/static/console.js",
    "/static/executions.js",
    "/static/format.js",
    "/static/hosts.js",
    "/static/saved.js",
    "/static/audit.js",
    "/static/schedules.js",
    "/static/terminal.js",
}


def test_no_data_without_a_token(page: Page, fleet: Fleet) -> None:
    requests: list[str] = []

    def seen(request: Request) -> None:
        requests.append(urlparse(request.url).path)

    page.on("request", seen)
    ui = ConsolePage(page, fleet)
    page.goto(fleet.base_url + "/")
    expect(page.get_by_test_id("token-input")).to_be_visible()
    expect(page.get_by_test_id("app")).to_be_hidden()
    page.wait_for_load_state("networkidle")
    assert set(requests) <= STATIC_PATHS, requests

    page.get_by_test_id("token-input").fill("not-a-token")
    page.get_by_test_id("token-submit").click()
    expect(page.get_by_test_id("token-error")).to_contain_text("refused")
    expect(page.get_by_test_id("app")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('cloudops.token')") is None

    ui.sign_in()
    assert page.evaluate("sessionStorage.getItem('cloudops.token')") == fleet.token
    assert page.evaluate("localStorage.length") == 0
    page.get_by_test_id("sign-out").click()
    expect(page.get_by_test_id("token-input")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('cloudops.token')") is None


def test_command_from_the_form_streams_live_and_notifies(page: Page, fleet: Fleet) -> None:
    page.add_init_script(FAKE_NOTIFICATION_JS)
    ui = ConsolePage(page, fleet)
    ui.sign_in()
    t0 = time.monotonic()
    ex = ui.run_command("echo first line; sleep 3; echo second line", timeout="60")
    expect(ui.output_line("first line")).to_be_visible(timeout=10_000)
    first_output_s = time.monotonic() - t0
    # Live: the first line is on screen while the command still sleeps.
    expect(ui.status).to_have_attribute("data-status", "running")
    assert ui.output_line("second line").count() == 0
    expect(ui.row(ex)).to_have_attribute("data-status", "running")
    ui.screenshot("console-command-running")

    ui.expect_status("completed")
    assert ui.output_lines() == ["first line", "second line"]
    expect(ui.row(ex)).to_have_attribute("data-status", "completed")
    toast = page.locator(f'[data-testid="toast"][data-execution-id="{ex}"]')
    expect(toast).to_have_attribute("data-status", "completed")
    expect(toast).to_contain_text("Completed")
    notes = page.evaluate("window.__notifications")
    assert any(n["title"].startswith("cloudops: Completed") for n in notes), notes
    expect(fact(page, "exit code")).to_have_text("0")
    expect(fact(page, "timeout")).to_have_text("60 s")
    print(f"\nconsole: first output on screen {first_output_s:.2f} s after Run")


def fact(page: Page, label: str) -> Locator:
    """The value shown for `label` in the execution's header."""
    facts = page.get_by_test_id("execution-facts")
    return facts.locator(".fact", has=page.locator("dt", has_text=label)).locator("dd")


def test_failed_timeout_and_refused_runs(page: Page, fleet: Fleet) -> None:
    ui = ConsolePage(page, fleet)
    ui.sign_in()
    failed = ui.run_command("echo about to fail >&2; exit 3")
    ui.expect_status("failed")
    expect(fact(page, "exit code")).to_have_text("3")
    toast = page.locator(f'[data-testid="toast"][data-execution-id="{failed}"]')
    expect(toast).to_have_attribute("data-status", "failed")
    expect(toast).to_contain_text("exit code 3")

    timed_out = ui.run_command("echo waiting; sleep 60", timeout="1")
    ui.expect_status("timeout", timeout_s=30)
    toast = page.locator(f'[data-testid="toast"][data-execution-id="{timed_out}"]')
    expect(toast).to_have_attribute("data-status", "timeout")
    expect(ui.row(timed_out)).to_have_attribute("data-status", "timeout")

    # The relay's 422 names the field; nothing is started.
    page.get_by_test_id("command-input").fill("ls -l")
    page.get_by_test_id("command-type").select_option("aws_cli")
    page.get_by_test_id("run-command").click()
    expect(page.get_by_test_id("form-error")).to_contain_text("command: ")
    expect(page.get_by_test_id("execution-id")).to_have_text(timed_out)


def test_stderr_styled_apart_and_ansi_colours_rendered(page: Page, fleet: Fleet) -> None:
    ui = ConsolePage(page, fleet)
    ui.sign_in()
    script = (
        r"printf 'status \033[31mRED\033[0m and \033[1;32mGREEN\033[0m'; printf ' done\n'; "
        r"printf 'warning: disk almost full\n' >&2; "
        r"printf '\033[38;5;208morange\033[0m \033[38;2;10;20;250mtruecolor\033[0m\n'; "
        r"printf '<b>not bold</b> & \033[41mon red\033[49m\n'"
    )
    ui.run_command(script)
    ui.expect_status("completed")
    lines = ui.output_lines()
    # stdout in order; where stderr falls among it is up to the pipes.
    assert [line for line in lines if not line.startswith("warning")] == [
        "status RED and GREEN done",
        "orange truecolor",
        "<b>not bold</b> & on red",
    ], lines
    assert "warning: disk almost full" in lines

    lines_box = page.get_by_test_id("terminal-lines")
    red = lines_box.locator("span", has_text=re.compile("^RED$"))
    plain = lines_box.locator("span", has_text=re.compile("^status $"))
    stderr = lines_box.locator("span", has_text="warning: disk almost full")
    r, g, b = rgb(ui.computed(red, "color"))
    assert r > 200 and g < 120 and b < 120, (r, g, b)  # red
    assert ui.computed(red, "color") == "rgb(248, 81, 73)"
    green = lines_box.locator("span", has_text=re.compile("^GREEN$"))
    assert ui.computed(green, "color") == "rgb(63, 185, 80)"
    assert ui.computed(green, "fontWeight") == "700"
    assert ui.computed(lines_box.locator("span", has_text="orange"), "color") == "rgb(255, 135, 0)"
    truecolor = lines_box.locator("span", has_text="truecolor")
    assert ui.computed(truecolor, "color") == "rgb(10, 20, 250)"
    on_red = lines_box.locator("span", has_text="on red")
    assert ui.computed(on_red, "backgroundColor") == "rgb(182, 35, 36)"

    # stderr: another colour, and its line marked, unlike stdout.
    stdout_colour = ui.computed(plain, "color")
    assert ui.computed(stderr, "color") != stdout_colour
    stderr_line = lines_box.locator(".l:not(.meta)", has_text="warning: disk almost full")
    stdout_line = lines_box.locator(".l:not(.meta)", has_text="status RED")
    assert ui.computed(stderr_line, "borderLeftColor") != ui.computed(
        stdout_line, "borderLeftColor"
    )
    # Escaped, not interpreted: no <b> element came from the output.
    assert lines_box.locator("b").count() == 0


PLAYBOOK = """\
name: Browser rollout
steps:
  - id: prepare
    name: Prepare
    command: echo preparing; sleep 1.5
  - id: check
    name: Flaky check
    command: echo checking; sleep 1.5; echo 'check failed' >&2; exit 3
    continue_on_error: true
  - id: report
    name: Report
    command: sleep 1; echo "report for {{ params.env }}"
"""


def test_playbook_steps_change_state(page: Page, fleet: Fleet) -> None:
    ui = ConsolePage(page, fleet)
    ui.sign_in()
    ui.record_step_history()
    ex = ui.run_playbook(PLAYBOOK, "# the target\nenv=staging\n")
    steps = page.get_by_test_id("step")
    expect(steps).to_have_count(3, timeout=10_000)
    check = page.locator('[data-testid="step"][data-step-id="check"]')
    expect(check).to_have_attribute("data-status", "running", timeout=15_000)
    ui.screenshot("console-playbook-running")
    ui.expect_status("completed", timeout_s=30)  # the failed step had continue_on_error

    history = ui.step_history()
    assert history["prepare"][-2:] == ["running", "completed"], history
    assert history["check"] == ["pending", "running", "failed"], history
    assert history["report"] == ["pending", "running", "completed"], history
    for step_id in ("prepare", "check", "report"):
        duration = page.locator(
            f'[data-testid="step"][data-step-id="{step_id}"] [data-testid="step-duration"]'
        )
        expect(duration).to_have_text(re.compile(r"^\d+(\.\d+)? (ms|s)$"))
    seconds = float(
        (
            page.locator('[data-step-id="check"] [data-testid="step-duration"]').text_content()
            or ""
        ).split()[0]
    )
    assert 1.4 <= seconds < 10, seconds
    expect(check).to_contain_text("exit 3")
    assert ui.output_lines() == ["preparing", "checking", "check failed", "report for staging"]
    expect(page.get_by_test_id("playbook-progress")).to_have_text("3 of 3 steps finished")
    expect(ui.row(ex)).to_have_attribute("data-status", "completed")


def test_a_refused_playbook_shows_every_problem_on_its_own_line(page: Page, fleet: Fleet) -> None:
    ui = ConsolePage(page, fleet)
    ui.sign_in()
    page.get_by_test_id("tab-playbook").click()
    page.get_by_test_id("playbook-yaml").fill(
        "steps:\n  - id: a\n    command: echo\n    timeout: 0\n  - id: a\n    comand: echo\n"
    )
    page.get_by_test_id("run-playbook").click()
    error = page.get_by_test_id("form-error")
    expect(error).to_be_visible()
    lines = (error.inner_text() or "").splitlines()
    assert [ln.partition(": ")[0] for ln in lines] == [
        "<request>, line 4, step 1 (a), field timeout",
        "<request>, line 5, step 2 (a), field id",
        "<request>, line 6, step 2 (a), field comand",
        "<request>, line 5, step 2 (a), field command",
    ], lines


def test_cancel_from_the_console(page: Page, fleet: Fleet) -> None:
    ui = ConsolePage(page, fleet)
    ui.sign_in()
    marker = f"{random.randint(1000, 9999)}.{random.randint(100, 999)}"
    ui.run_command(f"echo started; sleep {marker}; echo never")
    expect(ui.output_line("started")).to_be_visible(timeout=15_000)
    wait_until(lambda: live_pids_with(f"sleep {marker}"), 10, what="the sleep process")
    ui.cancel()
    ui.expect_status("cancelled", timeout_s=20)
    expect(page.get_by_test_id("cancel-execution")).to_be_hidden()
    expect(page.locator('[data-testid="toast"][data-status="cancelled"]')).to_be_visible()
    expect(page.locator(".l.meta", has_text="cancelled")).to_have_count(2)  # reason, summary
    wait_until(lambda: not live_pids_with(f"sleep {marker}"), 10, what="the process gone")
    assert ui.output_lines() == ["started"]


def test_list_follows_executions_started_elsewhere(page: Page, fleet: Fleet) -> None:
    ui = ConsolePage(page, fleet)
    ui.sign_in()
    ex = fleet.submit("echo from the API; sleep 2")  # not from this page
    row = ui.row(ex)
    expect(row).to_have_attribute("data-status", "running", timeout=15_000)
    expect(row.get_by_test_id("row-command")).to_have_text("echo from the API; sleep 2")
    expect(page.get_by_test_id("detail")).to_be_hidden()  # listed, not opened
    page.get_by_test_id("status-filter").select_option("active")
    expect(row).to_be_visible()
    expect(row).to_have_attribute("data-status", "completed", timeout=15_000)
    expect(row).to_be_hidden()  # the filter shows queued and running ones only
    page.get_by_test_id("status-filter").select_option("")
    ui.open_execution(ex)  # replayed from its history
    ui.expect_output(["from the API"])


def test_list_search_box_and_older_pages_on_scroll(page: Page, fleet: Fleet) -> None:
    older = [fleet.submit(f"echo page-{i}") for i in range(130)]  # more than the first page
    ui = ConsolePage(page, fleet)
    ui.sign_in()
    expect(ui.row(older[-1])).to_be_visible()
    expect(ui.row(older[0])).to_have_count(0)  # beyond the first page: not loaded yet
    for _ in range(3):  # each scroll to the end asks for the next page (X-Next-Cursor)
        page.get_by_test_id("executions").evaluate("el => { el.scrollTop = el.scrollHeight; }")
        if ui.row(older[0]).count():
            break
        page.wait_for_function(
            "n => document.querySelectorAll('[data-testid=execution-row]').length > n",
            arg=page.get_by_test_id("execution-row").count(),
            timeout=10_000,
        )
    expect(ui.row(older[0])).to_have_count(1, timeout=10_000)

    needle = fleet.submit("echo Needle-In-The-List")
    page.get_by_test_id("list-search").fill("needle-in-THE")
    expect(ui.row(needle)).to_be_visible(timeout=10_000)
    expect(ui.row(older[5])).to_be_hidden()
    page.get_by_test_id("list-search").fill("")
    expect(ui.row(older[5])).to_be_visible()
