"""Fixtures of the browser tests: Debian's Chromium driven by Playwright, against a real uvicorn
relay (the real CeleryDispatcher), a real `cloudops worker` and the real Redis.

One fleet (relay and worker on one key prefix) serves the whole session: starting a worker
takes seconds and the tests only look at their own executions. A test that restarts the relay
does it through `Fleet.restart_relay`, on the same port, so the pages it left open reconnect.
Each test gets a fresh browser context and leaves a screenshot in tests/artifacts/browser/.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
import redis
from playwright.sync_api import Browser, Page, ViewportSize, sync_playwright

from events.db import migrate
from events.settings import Settings
from tests.conftest import REDIS_URL, worker_env
from tests.db.pg import create_pg_database, drop_pg_database
from tests.helpers import REPO, ManagedProcess, cloudops_argv, free_port, start_process
from tests.relay.helpers import RelayProcess, start_relay

CHROMIUM = Path("/usr/bin/chromium")
# The only way these tests launch a browser: Debian's build, never a downloaded one.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-gpu",
]
ARTIFACTS = REPO / "tests" / "artifacts" / "browser"
VIEWPORT: ViewportSize = {"width": 1440, "height": 900}


@dataclass
class Fleet:
    """The relay and the worker the browser talks to."""

    settings: Settings
    token: str
    port: int
    log_dir: Path
    relay: RelayProcess
    worker: ManagedProcess

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self) -> httpx.Client:
        return self.relay.client()

    def submit(self, command: str, **options: object) -> str:
        body: dict[str, object] = {"commandType": "script", "command": command}
        if options:
            body["options"] = options
        with self.api() as api:
            resp = api.post("/api/executions", json=body)
        assert resp.status_code == 202, resp.text
        return str(resp.json()["executionId"])

    def kill_relay(self) -> None:
        """SIGKILL, like a crash: no graceful close of any stream."""
        proc = self.relay.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def start_relay(self) -> None:
        self.relay = _start_relay(self.settings, self.log_dir, self.token, self.port)

    def restart_relay(self) -> float:
        """Kill the relay and start it again on the same port; returns the seconds it was gone."""
        t0 = time.monotonic()
        self.kill_relay()
        self.start_relay()
        return time.monotonic() - t0

    def logs(self) -> str:
        return f"relay:\n{self.relay.logs()[-3000:]}\nworker:\n{self.worker.log()[-3000:]}"


def _start_relay(settings: Settings, log_dir: Path, token: str, port: int) -> RelayProcess:
    return start_relay(
        settings,
        log_dir / "relay.log",
        tokens=(token,),
        port=port,
        env={"RELAY_TEST_DISPATCHER": "celery", "CLOUDOPS_SSE_PING_INTERVAL_S": "1"},
    )


# Package scope, not session: Playwright's sync API keeps an event loop running in this thread
# until it stops, and later tests (the relay's) call asyncio.run().
@contextlib.contextmanager
def database_relay(fleet: Fleet, name: str) -> Iterator[Fleet]:
    """The package's fleet (its worker, its Redis) behind a relay of its own with a PostgreSQL
    history database (saved playbooks, named tokens, the audit log live there), made for the
    caller and dropped after."""
    url = create_pg_database(name)
    migrate.upgrade(url)
    port = free_port()
    relay = start_relay(
        fleet.settings,
        fleet.log_dir / f"relay-{name}.log",
        tokens=(fleet.token,),
        port=port,
        env={"RELAY_TEST_DISPATCHER": "celery", "CLOUDOPS_DATABASE_URL": url},
    )
    try:
        yield replace(fleet, port=port, relay=relay)
    finally:
        relay.stop()
        drop_pg_database(url)


@pytest.fixture(scope="package")
def chromium() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(
            "browser tests need Debian's chromium at /usr/bin/chromium "
            "(apt-get install chromium; CI installs it)"
        )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="package")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if not CHROMIUM.exists():
        pytest.skip("browser tests need Debian's chromium at /usr/bin/chromium")
    log_dir = tmp_path_factory.mktemp("browser-fleet")
    prefix = f"tb{uuid.uuid4().hex[:10]}"
    settings = Settings(redis_url=REDIS_URL, key_prefix=prefix)
    token = "tok-" + secrets.token_hex(16)
    argv = cloudops_argv("worker", "--concurrency", "3", "--hostname", "browser@test")
    worker = start_process(argv, worker_env(settings), log_dir / "worker.log", "worker")
    relay: RelayProcess | None = None
    try:
        worker.wait_for_log(" ready.", timeout_s=60)
        port = free_port()
        relay = _start_relay(settings, log_dir, token, port)
        fleet = Fleet(settings, token, port, log_dir, relay, worker)
        yield fleet
        relay = fleet.relay
    finally:
        if relay is not None:
            relay.stop()
        worker.stop(timeout_s=10)
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
        client.close()


@pytest.fixture(autouse=True)
def _cancel_leftovers(request: pytest.FixtureRequest) -> Iterator[None]:
    """A failed test may leave a long command running: cancel it so the next test has a slot."""
    yield
    if "fleet" not in request.fixturenames:
        return
    fleet: Fleet = request.getfixturevalue("fleet")
    with contextlib.suppress(httpx.HTTPError), fleet.api() as api:
        for status in ("running", "queued"):
            listed = api.get("/api/executions", params={"status": status}).json()
            for rec in listed:
                api.post(f"/api/executions/{rec['executionId']}/cancel")


@pytest.fixture
def page(chromium: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A page in a fresh context (its own sessionStorage); screenshot kept at the end.
    Uncaught exceptions in the page fail the test, and so does anything the relay's
    Content-Security-Policy blocked: every browser test is also a CSP test of the console."""
    context = chromium.new_context(viewport=VIEWPORT, accept_downloads=True)
    context.add_init_script(CSP_WATCH)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    blocked: list[str] = []
    page.on("console", lambda msg: _note_csp(msg.text, blocked))
    try:
        yield page
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):
            page.screenshot(path=ARTIFACTS / f"{request.node.name}.png")
        with contextlib.suppress(Exception):
            blocked += page.evaluate("window.__cspViolations || []")
    finally:
        context.close()
    assert not errors, f"uncaught exceptions in the page: {errors}"
    assert not blocked, f"the Content-Security-Policy blocked: {blocked}"


# Records every CSP violation of the page (the event fires for each blocked load or inline).
CSP_WATCH = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sample || ""}`);
});
"""


def _note_csp(text: str, blocked: list[str]) -> None:
    if "Content Security Policy" in text or "Content-Security-Policy" in text:
        blocked.append(text)
