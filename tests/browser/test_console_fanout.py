"""A fan-out step (CONTRACT §7) in the console, in headless Chromium: three real workers on
queue `web`, each with its own MARK. The hosts table follows every host live (running, then
completed with its duration and exit code 0), each host's tab shows exactly its own output,
the same renders again from the replay after a reload, and a failing host shows failed with
its exit code and the Rerun buttons (their request as CONTRACT §7 words it)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Locator, Page, Route, expect

from events.keys import Keys
from tests.browser.conftest import Fleet
from tests.browser.console_page import OUTPUT_LINES, ConsolePage
from tests.conftest import REDIS_URL, worker_env
from tests.helpers import ManagedProcess, cloudops_argv, start_process, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.integration]

HOSTS = ["web1@t", "web2@t", "web3@t"]
MARKS = {h: f"mark-{h.split('@')[0]}" for h in HOSTS}


@pytest.fixture(scope="module")
def web_fleet(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Three workers on queue `web` of the session fleet, MARK set per worker, all online."""
    log_dir = tmp_path_factory.mktemp("web-fleet")
    procs: list[ManagedProcess] = []
    try:
        for host in HOSTS:
            argv = cloudops_argv(
                "worker", "--concurrency", "1", "--hostname", host, "--queues", "web"
            )
            env = worker_env(fleet.settings, {"MARK": MARKS[host]})
            procs.append(start_process(argv, env, log_dir / f"{host}.log", host))

        def online() -> bool:
            with fleet.api() as api:
                listed = api.get("/api/workers").json()
            return {w["hostname"] for w in listed if w["online"]} >= set(HOSTS)

        wait_until(online, timeout_s=60, what="the three web workers online")
        yield HOSTS
    finally:
        for proc in procs:
            proc.stop(timeout_s=10)
        # An offline worker stays listed for a day: the fleet's other tests list only theirs.
        keys = Keys(fleet.settings.key_prefix)
        client = redis.Redis.from_url(REDIS_URL)
        for host in HOSTS:
            client.delete(keys.host(host))
            client.zrem(keys.hosts(), host)
        client.close()


def fanout_yaml(command: str) -> str:
    return (
        "name: fan-out\n"
        "steps:\n"
        "  - name: Everywhere\n"
        f"    command: {json.dumps(command)}\n"
        "    targets: {queue: web}\n"
    )


def host_row(page: Page, host: str) -> Locator:
    return page.locator(f'[data-testid="fanout-host"][data-host="{host}"]')


def expect_tab_output(page: Page, host: str, lines: list[str]) -> None:
    tab = page.locator(f'[data-testid="host-tab"][data-host="{host}"]')
    tab.click()
    expect(tab).to_have_attribute("aria-selected", "true")
    # Hosts run at once: "All hosts" has their lines in the order they came.
    output = page.locator(OUTPUT_LINES)
    expect(output).to_have_count(len(lines), timeout=10_000)
    expect(output.first).not_to_have_text("", timeout=10_000)
    assert sorted(output.all_text_contents()) == sorted(lines)


def check_completed(page: Page) -> None:
    for host in HOSTS:
        row = host_row(page, host)
        expect(row).to_have_attribute("data-status", "completed", timeout=30_000)
        expect(row.get_by_test_id("fanout-host-exit")).to_have_text("0")
        expect(row.get_by_test_id("fanout-host-duration")).to_have_text(re.compile(r"\d.*s$"))
    for host in HOSTS:
        expect_tab_output(page, host, [MARKS[host]])
    # All hosts: every host's line, prefixed with its host as the CLI does.
    expect_tab_output(page, "", [f"{h} | {MARKS[h]}" for h in HOSTS])


def test_fanout_hosts_live_then_completed_then_replayed(
    page: Page, fleet: Fleet, web_fleet: list[str], tmp_path: Path
) -> None:
    release = tmp_path / "release"
    console = ConsolePage(page, fleet)
    console.sign_in()
    # Each host prints its MARK, then waits for the file this test creates.
    console.run_playbook(fanout_yaml(f"echo $MARK; until [ -e {release} ]; do sleep 0.05; done"))
    for host in HOSTS:
        expect(host_row(page, host)).to_have_attribute("data-status", "running", timeout=30_000)
    for host in HOSTS:
        expect_tab_output(page, host, [MARKS[host]])
    # The running clock ticks: a duration is shown and changes while the host runs.
    duration = host_row(page, HOSTS[0]).get_by_test_id("fanout-host-duration")
    first = duration.text_content() or ""
    expect(duration).not_to_have_text(first, timeout=5_000)
    expect(page.get_by_test_id("rerun-failed")).to_be_hidden()
    release.touch()
    console.expect_status("completed")
    check_completed(page)
    expect(page.get_by_test_id("rerun-failed")).to_be_hidden()  # nothing to rerun
    # Opened again after a reload: the same from the relay's replay.
    page.reload()
    expect(page.get_by_test_id("app")).to_be_visible(timeout=10_000)
    console.expect_status("completed")
    check_completed(page)


def test_failed_host_and_rerun_buttons(page: Page, fleet: Fleet, web_fleet: list[str]) -> None:
    console = ConsolePage(page, fleet)
    console.sign_in()
    ex_id = console.run_playbook(fanout_yaml('echo $MARK; [ "$MARK" != mark-web2 ] || exit 3'))
    console.expect_status("failed")
    bad = host_row(page, "web2@t")
    expect(bad).to_have_attribute("data-status", "failed", timeout=30_000)
    expect(bad.get_by_test_id("fanout-host-exit")).to_have_text("3")
    for host in ("web1@t", "web3@t"):
        expect(host_row(page, host)).to_have_attribute("data-status", "completed")
    expect(page.get_by_test_id("cancel-execution")).to_be_hidden()

    # The route is CONTRACT §7's; answered here so that the console's side is tested alone.
    seen: list[tuple[str, str | None]] = []
    other = fleet.submit("echo the rerun")
    answers = [(409, {"detail": "execution is still running"}), (202, {"executionId": other})]

    def answer(route: Route) -> None:
        req = route.request
        seen.append((req.post_data or "", req.headers.get("authorization")))
        status, body = answers.pop(0)
        route.fulfill(status=status, content_type="application/json", body=json.dumps(body))

    page.route(f"**/api/executions/{ex_id}/rerun", answer)
    page.get_by_test_id("rerun-failed").click()
    toast = page.get_by_test_id("toast").filter(has_text="execution is still running")
    expect(toast).to_be_visible()
    page.get_by_test_id("rerun-all").click()
    expect(page.get_by_test_id("execution-id")).to_have_text(other)  # the new one opened
    assert [json.loads(body) for body, _ in seen] == [{"hosts": "failed"}, {"hosts": "all"}]
    assert all(auth == f"Bearer {fleet.token}" for _, auth in seen)


def test_rerun_failed_button_on_the_real_route(
    page: Page, fleet: Fleet, web_fleet: list[str]
) -> None:
    """The button against the relay's real route: a new execution opens, `rerunOf` names the
    failed one and only the host that failed runs again (it fails again, the same way)."""
    console = ConsolePage(page, fleet)
    console.sign_in()
    ex_id = console.run_playbook(fanout_yaml('echo $MARK; [ "$MARK" != mark-web2 ] || exit 3'))
    console.expect_status("failed")
    expect(host_row(page, "web2@t")).to_have_attribute("data-status", "failed", timeout=30_000)
    page.get_by_test_id("rerun-failed").click()
    expect(page.get_by_test_id("execution-id")).not_to_have_text(ex_id, timeout=10_000)
    new_id = page.get_by_test_id("execution-id").text_content() or ""
    console.expect_status("failed")
    bad = host_row(page, "web2@t")
    expect(bad).to_have_attribute("data-status", "failed", timeout=30_000)
    expect(bad.get_by_test_id("fanout-host-exit")).to_have_text("3")
    expect(page.locator('[data-testid="fanout-host"]')).to_have_count(1)
    expect_tab_output(page, "web2@t", [MARKS["web2@t"]])
    with fleet.api() as api:
        record = api.get(f"/api/executions/{new_id}").json()
    assert record["rerunOf"] == ex_id
    assert [h["host"] for h in record["steps"][0]["hosts"]] == ["web2@t"]
