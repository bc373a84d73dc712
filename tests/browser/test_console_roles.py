"""The console knows the role (issue 16 item 5), in Chromium, on a relay with a PostgreSQL
history (named tokens live there) and the package's real worker: it shows who is signed in
and with which role; a viewer sees no Run, Cancel or Rerun; an operator does; only an admin
sees the audit log, which lists what was done."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Fleet, database_relay
from tests.browser.console_page import ConsolePage

pytestmark = [pytest.mark.browser, pytest.mark.integration]


@pytest.fixture(scope="module")
def roles_relay(fleet: Fleet) -> Iterator[tuple[Fleet, dict[str, str]]]:
    """A relay with a database, and a viewer's and an operator's token secrets made there."""
    with database_relay(fleet, "console_roles") as db_fleet:
        secrets: dict[str, str] = {}
        with db_fleet.api() as api:
            for role in ("viewer", "operator"):
                made = api.post("/api/tokens", json={"name": f"{role}-1", "role": role})
                assert made.status_code == 201, made.text
                secrets[role] = made.json()["secret"]
        yield db_fleet, secrets


def sign_in_on_running(page: Page, fleet: Fleet, token: str) -> ConsolePage:
    """Signed in with `token`, a running execution opened."""
    ex = fleet.submit("echo up; sleep 30")
    console = ConsolePage(page, fleet)
    console.sign_in(token)
    console.open_execution(ex)
    console.expect_status("running")
    return console


def test_a_viewer_sees_no_run_cancel_or_audit(
    page: Page, roles_relay: tuple[Fleet, dict[str, str]]
) -> None:
    fleet, secrets = roles_relay
    sign_in_on_running(page, fleet, secrets["viewer"])
    expect(page.get_by_test_id("whoami")).to_have_text("viewer-1 · viewer")
    expect(page.get_by_test_id("launcher")).to_be_hidden()
    expect(page.get_by_test_id("run-command")).to_be_hidden()
    expect(page.get_by_test_id("cancel-execution")).to_be_hidden()
    expect(page.get_by_test_id("audit-panel")).to_be_hidden()
    expect(page.get_by_test_id("terminal-lines")).to_contain_text("up")  # still reads


def test_an_operator_runs_and_cancels_but_has_no_audit(
    page: Page, roles_relay: tuple[Fleet, dict[str, str]]
) -> None:
    fleet, secrets = roles_relay
    console = sign_in_on_running(page, fleet, secrets["operator"])
    expect(page.get_by_test_id("whoami")).to_have_text("operator-1 · operator")
    expect(page.get_by_test_id("run-command")).to_be_visible()
    expect(page.get_by_test_id("audit-panel")).to_be_hidden()
    console.cancel()
    console.expect_status("cancelled")
    with fleet.api() as api:
        ex = page.get_by_test_id("execution-id").text_content() or ""
        assert api.get(f"/api/executions/{ex}").json()["cancelledBy"] == "operator-1"


def test_an_admin_sees_the_audit_log(page: Page, roles_relay: tuple[Fleet, dict[str, str]]) -> None:
    fleet, _ = roles_relay
    console = sign_in_on_running(page, fleet, fleet.token)
    expect(page.get_by_test_id("whoami")).to_have_text("env-1 · admin")
    # Who started it (CONTRACT §9), in the execution's facts.
    expect(page.locator(".fact", has_text="submitted by")).to_contain_text("env-1")
    expect(page.get_by_test_id("cancel-execution")).to_be_visible()
    panel = page.get_by_test_id("audit-panel")
    expect(panel).to_be_visible()
    created = panel.locator('[data-testid="audit-entry"][data-action="token.create"]')
    expect(created).to_have_count(2, timeout=15_000)
    console.cancel()
    console.expect_status("cancelled")
