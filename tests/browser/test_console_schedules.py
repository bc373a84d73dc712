"""The console's schedules panel in headless Chromium: a schedule made through the API is
listed with its cadence and next run time; a relay without a history database says schedules
need one, as a note rather than an error."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest
from playwright.sync_api import Page, expect

from events.db import migrate
from tests.browser.conftest import Fleet
from tests.browser.console_page import ConsolePage
from tests.helpers import free_port
from tests.relay.helpers import start_relay

pytestmark = [pytest.mark.browser, pytest.mark.integration]

PLAYBOOK = "name: nightly\nsteps:\n  - id: one\n    command: echo nightly\n"


@pytest.fixture(scope="module")
def db_fleet(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A second relay on the session fleet's Redis and worker, with a history database."""
    log_dir = tmp_path_factory.mktemp("schedules-relay")
    url = migrate.sqlite_url(log_dir / "history.db")
    migrate.upgrade(url)
    port = free_port()
    env = {"RELAY_TEST_DISPATCHER": "celery", "CLOUDOPS_DATABASE_URL": url}
    relay = start_relay(
        fleet.settings, log_dir / "relay.log", tokens=(fleet.token,), port=port, env=env
    )
    try:
        yield Fleet(fleet.settings, fleet.token, port, log_dir, relay, fleet.worker)
    finally:
        relay.stop()


def test_schedules_panel_lists_each_schedule_with_its_next_run(page: Page, db_fleet: Fleet) -> None:
    with db_fleet.api() as api:
        put = api.put(
            "/api/playbooks/nightly", content=PLAYBOOK, headers={"Content-Type": "text/yaml"}
        )
        assert put.status_code in (200, 201), put.text
        made = api.post(
            "/api/schedules",
            json={"playbookName": "nightly", "cron": "30 2 * * *", "timezone": "Europe/Paris"},
        ).json()
        paused = api.post(
            "/api/schedules", json={"playbookName": "nightly", "intervalS": 60, "enabled": False}
        ).json()
    ConsolePage(page, db_fleet).sign_in()
    row = page.locator(f'[data-testid="schedule"][data-schedule-id="{made["id"]}"]')
    expect(row).to_be_visible(timeout=10_000)
    expect(row.locator(".schedule-name")).to_have_text("nightly")
    expect(row.locator(".schedule-meta")).to_have_text("cron 30 2 * * * (Europe/Paris)")
    next_run = row.get_by_test_id("schedule-next")
    expect(next_run).to_have_attribute("data-at", made["nextRunAt"])
    expect(next_run).to_contain_text("next ")
    assert datetime.fromisoformat(made["nextRunAt"].replace("Z", "+00:00")).minute == 30
    off = page.locator(f'[data-testid="schedule"][data-schedule-id="{paused["id"]}"]')
    expect(off).to_have_attribute("data-enabled", "false")
    expect(off.get_by_test_id("schedule-next")).to_have_text("disabled")
    expect(page.get_by_test_id("schedules-count")).to_have_text("2")
    expect(page.get_by_test_id("schedules-error")).to_be_hidden()


def test_without_a_database_the_panel_says_so_quietly(page: Page, fleet: Fleet) -> None:
    ConsolePage(page, fleet).sign_in()
    expect(page.get_by_test_id("schedules-empty")).to_contain_text(
        "need the history database", timeout=10_000
    )
    expect(page.get_by_test_id("schedules-error")).to_be_hidden()
