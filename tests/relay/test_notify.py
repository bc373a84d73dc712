"""Webhook notifications (CONTRACT §10) end to end: a real `cloudops worker`, the real relay and
a real HTTP receiver in this process (and embedded mode's thread). A failed run is POSTed once,
signed; a webhook that does not want the status is not called; 500s are retried until
delivered, every attempt visible on the relay; a receiver that is down changes nothing of the
execution; a queued run cancelled through the relay is notified too."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from cli.wiring import local
from events.notifications import sign
from events.settings import Settings
from tests.conftest import StartWorker
from tests.helpers import ManagedProcess, embedded_env, free_port, run_cloudops, wait_until
from tests.relay.conftest import StartRelay
from tests.relay.helpers import RelayProcess
from tests.relay.test_rest import wait_status
from worker.notify import attempt_store

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECRET = "test-webhook-secret"
PUBLIC_URL = "https://ops.example.com/"


@dataclass
class Receiver:
    """A webhook receiver: answers each POST with the next of `answers` (then 200) and keeps
    what it received."""

    answers: list[int] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    port: int = 0

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(body) for _, body in self.received]

    def posts(self) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return list(self.received)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with state.lock:
                state.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                code = state.answers.pop(0) if state.answers else 200
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


NOTIFY_ENV = {
    "CLOUDOPS_WEBHOOK_SECRET": SECRET,
    "CLOUDOPS_NOTIFY_BACKOFF_S": "0.2",
    "CLOUDOPS_PUBLIC_URL": PUBLIC_URL,
}


def notifying(
    start: StartRelay, start_worker: StartWorker, webhooks: str = ""
) -> tuple[RelayProcess, ManagedProcess]:
    env = dict(NOTIFY_ENV, CLOUDOPS_NOTIFY_WEBHOOKS=webhooks) if webhooks else NOTIFY_ENV
    worker = start_worker(env=env)
    return start(env={"RELAY_TEST_DISPATCHER": "celery", **env}), worker


def submit(api: httpx.Client, body: dict[str, object]) -> str:
    resp = api.post("/api/executions", json=body)
    assert resp.status_code == 202, resp.text
    return str(resp.json()["executionId"])


def playbook(name: str, command: str, notify: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "commandType": "playbook",
        "playbook": {"name": name, "steps": [{"command": command}], "notify": notify},
    }


def attempts(api: httpx.Client, execution_id: str, count: int) -> list[dict[str, Any]]:
    def enough() -> list[dict[str, Any]]:
        resp = api.get(f"/api/executions/{execution_id}/notifications")
        assert resp.status_code == 200, resp.text
        found: list[dict[str, Any]] = resp.json()
        return found if len(found) >= count else []

    found: list[dict[str, Any]] = wait_until(
        enough, 20.0, 0.05, f"{count} attempts of {execution_id}"
    )
    return found


def notify_done(worker: ManagedProcess, execution_id: str) -> None:
    """The notification task of `execution_id` ended for good (nothing more will be sent)."""
    worker.wait_for_log(f"cloudops.notify[{execution_id}.notify] succeeded", timeout_s=20)


def test_a_failed_run_is_notified_once_and_signed(
    start: StartRelay, start_worker: StartWorker, receiver: Receiver
) -> None:
    relay, worker = notifying(start, start_worker)
    hook = receiver.url("/hook?token=s3cret")
    with relay.client() as api:
        ex = submit(api, playbook("nightly", "exit 3", [{"on": ["failed"], "webhook": hook}]))
        record = wait_status(api, ex, "failed")
        (done,) = attempts(api, ex, 1)
        notify_done(worker, ex)
        assert len(receiver.posts()) == 1
        headers, body = receiver.posts()[0]
        expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["x-cloudops-signature"] == f"sha256={expected}"
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == {
            "executionId": ex,
            "status": "failed",
            "playbookName": "nightly",
            "exitCode": 3,
            "durationMs": record["durationMs"],
            "error": record.get("error"),
            "url": f"{PUBLIC_URL}#{ex}",
        }
        # The token in the webhook's query string is never shown.
        assert done["url"] == receiver.url("/hook?***")
        assert done["delivered"] is True and done["statusCode"] == 200 and done["attempt"] == 1
        assert "s3cret" not in worker.log() and "s3cret" not in relay.logs()
        assert api.get("/api/executions/ex_00000000000000000000/notifications").status_code == 404
        bad = api.post(
            "/api/executions", json=playbook("x", "true", [{"on": ["failed"], "webhook": "nope"}])
        )
        assert bad.status_code == 422 and "notify[0].webhook" in bad.text, bad.text
    assert httpx.get(f"{relay.base_url}/api/executions/{ex}/notifications").status_code == 401


def test_a_webhook_is_told_only_the_statuses_it_wants(
    start: StartRelay, start_worker: StartWorker, receiver: Receiver
) -> None:
    relay, worker = notifying(start, start_worker)
    only_failed = [{"on": ["failed"], "webhook": receiver.url()}]
    with relay.client() as api:
        fine = submit(api, playbook("fine", "true", only_failed))
        wait_status(api, fine, "completed")
        # A later failing run to the same receiver: once its POST is in, the completed run's
        # would have been long before it.
        bad = submit(api, playbook("bad", "false", only_failed))
        wait_status(api, bad, "failed")
        attempts(api, bad, 1)
        notify_done(worker, bad)
        assert [b["executionId"] for b in receiver.bodies()] == [bad]
        assert api.get(f"/api/executions/{fine}/notifications").json() == []


@pytest.mark.brokers  # countdowns are held by the worker: on RabbitMQ beside its reserve of one
def test_server_errors_are_retried_until_delivered(
    start: StartRelay, start_worker: StartWorker, receiver: Receiver
) -> None:
    receiver.answers = [500, 500]
    relay, worker = notifying(start, start_worker, webhooks=receiver.url())
    with relay.client() as api:
        ex = submit(api, {"commandType": "script", "command": "echo hi"})
        wait_status(api, ex, "completed")
        found = attempts(api, ex, 3)
        notify_done(worker, ex)
        assert [(a["attempt"], a["statusCode"], a["delivered"]) for a in found] == [
            (1, 500, False),
            (2, 500, False),
            (3, 200, True),
        ]
        assert found[0]["error"] == "HTTP 500"
        bodies = receiver.bodies()
        assert len(bodies) == 3 and bodies[0] == bodies[2]
        assert bodies[0]["status"] == "completed" and bodies[0]["playbookName"] is None


def test_a_receiver_that_is_down_changes_nothing_of_the_execution(
    start: StartRelay, start_worker: StartWorker
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/hook"
    relay, _ = notifying(start, start_worker, webhooks=nobody)
    with relay.client() as api:
        ex = submit(api, {"commandType": "script", "command": "sleep 0.2; echo done"})
        record = wait_status(api, ex, "completed")
        assert record["durationMs"] < 5000
        found = attempts(api, ex, 3)
        assert not any(a["delivered"] for a in found)
        assert all(a["statusCode"] is None and a["error"] for a in found)
        assert api.get(f"/api/executions/{ex}").json() == record


def test_a_queued_run_cancelled_through_the_relay_is_notified(
    start: StartRelay, start_worker: StartWorker, receiver: Receiver
) -> None:
    relay, worker = notifying(start, start_worker)
    notify = [{"on": ["cancelled"], "webhook": receiver.url()}]
    body = playbook("one-at-a-time", "sleep 30", notify)
    body["playbook"]["max_concurrent"] = 1
    with relay.client() as api:
        running = submit(api, body)
        wait_status(api, running, "running")
        waiting = submit(api, body)  # waits for the slot: queued, no worker holds it
        assert api.post(f"/api/executions/{waiting}/cancel").status_code == 202
        wait_status(api, waiting, "cancelled")
        attempts(api, waiting, 1)
        notify_done(worker, waiting)
        assert [(b["executionId"], b["status"]) for b in receiver.bodies()] == [
            (waiting, "cancelled")
        ]
        assert api.post(f"/api/executions/{running}/cancel").status_code == 202
        wait_status(api, running, "cancelled")


def test_embedded_mode_notifies_from_a_thread_of_its_own(receiver: Receiver) -> None:
    settings = Settings(notify_webhooks=(receiver.url(),), webhook_secret=SECRET)
    parts = local(settings)  # as `cloudops run` wires it with no Redis: embedded
    assert parts.embedded
    try:
        ex = parts.dispatcher.submit_command("exit 4", "script")
        (headers, body), *_ = wait_until(receiver.posts, 20.0, 0.02, "the embedded POST")
        assert headers["x-cloudops-signature"] == sign(body, SECRET)
        assert json.loads(body)["executionId"] == ex
        assert json.loads(body)["exitCode"] == 4 and json.loads(body)["status"] == "failed"
        store = attempt_store(parts.runtime)
        wait_until(lambda: store.attempts(ex), 5.0, 0.02, "the embedded attempt")
        assert [a.delivered for a in store.attempts(ex)] == [True]
    finally:
        parts.runtime.close()


def test_an_embedded_cloudops_run_gives_its_webhook_a_first_attempt(receiver: Receiver) -> None:
    env = embedded_env() | {
        "CLOUDOPS_NOTIFY_WEBHOOKS": receiver.url("/hook?token=s3cret"),
        "CLOUDOPS_WEBHOOK_SECRET": SECRET,
    }
    done = run_cloudops("run", "--", "echo hi; exit 5", env=env)
    assert done.returncode != 0, done.stderr
    (headers, body), *_ = receiver.posts()
    assert headers["x-cloudops-signature"] == sign(body, SECRET)
    assert json.loads(body)["status"] == "failed" and json.loads(body)["exitCode"] == 5
    assert "s3cret" not in done.stdout + done.stderr


def test_a_run_whose_worker_died_is_notified_from_the_relays_reaper(
    start: StartRelay, start_worker: StartWorker, receiver: Receiver
) -> None:
    env = dict(NOTIFY_ENV, CLOUDOPS_NOTIFY_WEBHOOKS=receiver.url(), CLOUDOPS_LEASE_TTL_S="2")
    doomed = start_worker(hostname="doomed@test", env=env)
    relay = start(env={"RELAY_TEST_DISPATCHER": "celery", **env})
    with relay.client() as api:
        ex = submit(api, {"commandType": "script", "command": "echo up; sleep 60"})
        wait_status(api, ex, "running")
        doomed.kill_tree()
        # No worker is left: the relay's reaper ends the run, and queues its notification for
        # the next worker to deliver.
        record = wait_status(api, ex, "failed")
        assert "worker lost" in record["error"]
        start_worker(hostname="next@test", env=env)
        attempts(api, ex, 1)
        (body,) = receiver.bodies()
        assert (body["status"], body["error"]) == ("failed", record["error"])
