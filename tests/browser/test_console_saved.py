"""The console's saved playbook picker (issue 17 items 1 and 2) in Chromium, on a relay with a
PostgreSQL history (saved playbooks live there) and the package's real worker: pick a saved
playbook, the form has a select for its choice param and a password field for its secret, run
it, see it live, the secret masked."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Fleet, database_relay
from tests.browser.console_page import ConsolePage

pytestmark = [pytest.mark.browser, pytest.mark.integration]

SECRET = "pw-" + uuid.uuid4().hex
SAVED = """\
name: deploy-web
params:
  region: {type: choice, choices: [eu-west-1, us-east-1], default: eu-west-1}
  replicas: {type: int, min: 1, max: 5, default: 2}
  dry_run: {type: bool, default: true}
  tag: {type: string, pattern: '[a-z0-9-]+', required: true}
  token: {type: secret, required: true}
steps:
  - id: deploy
    command: >-
      echo "deploy {{ params.tag }} to {{ params.region }} x{{ params.replicas }}
      dry={{ params.dry_run }} token={{ params.token }}"; sleep 2; echo done
"""


@pytest.fixture(scope="module")
def saved_fleet(fleet: Fleet) -> Iterator[Fleet]:
    """A relay with a database (saved playbooks live there), the playbook saved through it."""
    with database_relay(fleet, "console") as db_fleet:
        with db_fleet.api() as api:
            resp = api.put(
                "/api/playbooks/deploy-web", content=SAVED, headers={"Content-Type": "text/yaml"}
            )
            assert resp.status_code == 201, resp.text
        yield db_fleet


def test_pick_a_saved_playbook_fill_its_typed_form_and_see_the_run_live(
    page: Page, saved_fleet: Fleet
) -> None:
    console = ConsolePage(page, saved_fleet)
    console.sign_in()
    page.get_by_test_id("tab-saved").click()
    picker = page.get_by_test_id("saved-playbook")
    expect(picker.locator("option[value='deploy-web']")).to_have_count(1, timeout=10_000)
    picker.select_option("deploy-web")
    box = page.get_by_test_id("saved-params")
    expect(box).to_have_attribute("data-ready", "true", timeout=10_000)
    expect(page.get_by_test_id("saved-version")).to_have_text("version 1")

    region = box.locator("select#saved-param-region")
    expect(region.locator("option")).to_have_text(["eu-west-1", "us-east-1"])
    expect(region).to_have_value("eu-west-1")  # its default
    token = box.locator("#saved-param-token")
    expect(token).to_have_attribute("type", "password")
    replicas = box.locator("#saved-param-replicas")
    expect(replicas).to_have_attribute("type", "number")
    expect(replicas).to_have_attribute("min", "1")
    expect(replicas).to_have_attribute("max", "5")
    expect(box.locator("#saved-param-dry_run")).to_have_attribute("type", "checkbox")
    expect(box.locator("#saved-param-dry_run")).to_be_checked()
    expect(box.locator("#saved-param-tag")).to_have_attribute("pattern", "[a-z0-9-]+")
    required = box.locator("[data-testid='saved-param']:has([data-testid='required-mark'])")
    expect(required).to_have_count(2)
    expect(required.nth(0)).to_have_attribute("data-param", "tag")
    expect(required.nth(1)).to_have_attribute("data-param", "token")

    region.select_option("us-east-1")
    box.locator("#saved-param-tag").fill("v42")
    box.locator("#saved-param-dry_run").uncheck()
    token.fill(SECRET)
    before = page.get_by_test_id("execution-id").text_content() or ""
    page.get_by_test_id("run-saved").click()
    execution_id = console._opened_after(before)
    # Live: its first line while it still runs, then the rest and its end.
    console.expect_output(["deploy v42 to us-east-1 x2 dry=false token=***"])
    console.expect_status("running")
    console.expect_output(["deploy v42 to us-east-1 x2 dry=false token=***", "done"])
    console.expect_status("completed")
    assert SECRET not in page.content()
    with saved_fleet.api() as api:
        record = api.get(f"/api/executions/{execution_id}").json()
    assert (record["playbookName"], record["playbookVersion"]) == ("deploy-web", 1)
    assert SECRET not in str(record)
