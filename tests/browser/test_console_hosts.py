"""The console's hosts panel in headless Chromium: the session fleet's real worker as
`GET /api/workers` lists it, online, with its queue and running/concurrency."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Fleet
from tests.browser.console_page import ConsolePage

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def test_hosts_panel_lists_the_fleet_worker(page: Page, fleet: Fleet) -> None:
    ConsolePage(page, fleet).sign_in()
    host = page.locator('[data-testid="host"][data-hostname="browser@test"]')
    expect(host).to_have_attribute("data-online", "true", timeout=10_000)
    expect(host.locator(".host-running")).to_have_text("0/3")
    expect(host.locator(".host-meta")).to_have_text("cloudops")
    expect(host.locator(".host-seen")).to_have_text("online")
    expect(page.get_by_test_id("hosts-count")).to_have_text("1/1")
    expect(page.get_by_test_id("hosts-error")).to_be_hidden()
