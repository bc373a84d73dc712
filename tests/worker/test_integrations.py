"""The worker with the tools around it: a real AWS CLI against a local endpoint, and Flower."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from events.models import ExecutionOptions
from tests.conftest import StartWorker, worker_env
from tests.helpers import (
    CeleryDispatcher,
    cloudops_argv,
    free_port,
    output_of,
    payloads,
    start_process,
    wait_until,
)
from tests.worker.conftest import Collect

pytestmark = pytest.mark.integration

STS_RESPONSE = b"""<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult>
    <Arn>arn:aws:iam::123456789012:user/ops</Arn>
    <UserId>AIDAEXAMPLEOPS</UserId>
    <Account>123456789012</Account>
  </GetCallerIdentityResult>
  <ResponseMetadata><RequestId>01234567-89ab-cdef-0123-456789abcdef</RequestId></ResponseMetadata>
</GetCallerIdentityResponse>"""


@pytest.fixture
def fake_sts() -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length).decode()
            seen.append({**{k.lower(): v for k, v in self.headers.items()}, "body": body})
            self.send_response(200)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(STS_RESPONSE)))
            self.end_headers()
            self.wfile.write(STS_RESPONSE)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def test_real_aws_cli_gets_profile_and_region(
    start_worker: StartWorker,
    dispatcher: CeleryDispatcher,
    collect: Collect,
    fake_sts: tuple[str, list[dict[str, str]]],
    tmp_path: Path,
) -> None:
    url, seen = fake_sts
    (tmp_path / "credentials").write_text(
        "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = default-secret\n"
        "[ops]\naws_access_key_id = AKIDOPSPROFILE\naws_secret_access_key = ops-secret-value\n"
    )
    (tmp_path / "config").write_text("[default]\nregion = us-east-1\n[profile ops]\n")
    start_worker(
        env={
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
            "AWS_CONFIG_FILE": str(tmp_path / "config"),
        }
    )
    opts = ExecutionOptions(aws_profile="ops", aws_region="eu-west-3")
    ex = dispatcher.submit_command(
        f"aws sts get-caller-identity --endpoint-url {url} --output json", "aws_cli", options=opts
    )
    events = collect(ex, timeout_s=60)
    done = payloads(events)[-1]
    assert done["status"] == "completed", output_of(events)
    assert '"Account": "123456789012"' in output_of(events, "stdout")
    assert len(seen) == 1
    auth = seen[0]["authorization"]
    # SigV4: Credential=<key id of the profile>/<date>/<region>/<service>/aws4_request
    assert "Credential=AKIDOPSPROFILE/" in auth
    assert "/eu-west-3/sts/aws4_request" in auth
    assert payloads(events, "execution_started")[0]["commandType"] == "aws_cli"


def test_aws_cli_command_must_start_with_aws(dispatcher: CeleryDispatcher) -> None:
    from events.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="must start with 'aws'"):
        dispatcher.submit_command("rm -rf /tmp/x", "aws_cli")


@pytest.mark.brokers
def test_flower_lists_the_task_with_name_worker_and_state(
    start_worker: StartWorker,
    dispatcher: CeleryDispatcher,
    collect: Collect,
    tmp_path: Path,
) -> None:
    start_worker(hostname="flowery@test")
    port = free_port()
    env = worker_env(dispatcher.settings)
    flower = start_process(
        cloudops_argv(
            "flower", f"--port={port}", "--address=127.0.0.1", "--basic-auth=ops:flower-pw"
        ),
        env,
        tmp_path / "flower.log",
        "flower",
    )
    try:
        base = f"http://127.0.0.1:{port}"
        auth = ("ops", "flower-pw")
        wait_until(lambda: _get(f"{base}/healthcheck", auth) is not None, 30, 0.1, "flower up")
        # Flower learns tasks from events: wait until it follows the worker before submitting.
        wait_until(
            lambda: "flowery@test" in (_get(f"{base}/api/workers?refresh=1", auth) or {}),
            30,
            0.2,
            "flower to see the worker",
        )
        ex = dispatcher.submit_command("echo hello flower", "script")
        collect(ex)

        def task_info() -> dict[str, Any]:
            tasks = _get(f"{base}/api/tasks", auth) or {}
            info: dict[str, Any] = tasks.get(ex) or {}
            return info if info.get("state") == "SUCCESS" else {}

        info = wait_until(task_info, 20, 0.1, "flower to list the task")
        assert info["name"] == "cloudops.run_command"
        assert info["worker"] == "flowery@test"
        assert info["args"] == f"['{ex}']"
        assert httpx.get(f"{base}/api/tasks").status_code == 401  # basic auth enforced
    finally:
        flower.stop(timeout_s=5)


def _get(url: str, auth: tuple[str, str]) -> Any:
    try:
        resp = httpx.get(url, auth=auth, timeout=2)
    except httpx.HTTPError:
        return None
    if resp.status_code != 200:
        return None
    try:
        return resp.json()
    except ValueError:
        return resp.text or None
