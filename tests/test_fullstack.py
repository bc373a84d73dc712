"""The deployment topology of docker-compose.yml, started as plain processes on loopback:
a Redis with a password over TLS, the relay, two workers on queues hostA and hostB, Flower,
and the CLI in remote mode."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from events.settings import Settings
from tests.conftest import worker_env
from tests.helpers import (
    ManagedProcess,
    cloudops_argv,
    free_port,
    live_pids_with,
    run_cloudops,
    start_process,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PASSWORD = "fullstack-" + uuid.uuid4().hex[:8]
TOKEN = "tok-" + uuid.uuid4().hex
FLOWER_AUTH = ("ops", "flower-" + uuid.uuid4().hex[:8])


@dataclass
class Stack:
    settings: Settings
    relay_url: str
    flower_url: str
    workers: dict[str, ManagedProcess]
    tmp: Path

    def env(self, **extra: str) -> dict[str, str]:
        return worker_env(self.settings, extra)


def tls_redis(tmp: Path) -> tuple[ManagedProcess, str]:
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "ca.pem"),
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    port = free_port()
    proc = start_process(
        [
            "redis-server", "--port", "0", "--tls-port", str(port),
            "--tls-cert-file", str(tmp / "ca.pem"), "--tls-key-file", str(tmp / "key.pem"),
            "--tls-ca-cert-file", str(tmp / "ca.pem"), "--tls-auth-clients", "no",
            "--requirepass", PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(tmp),
        ],
        dict(os.environ),
        tmp / "redis.log",
        "redis",
    )  # fmt: skip
    url = (
        f"rediss://:{PASSWORD}@127.0.0.1:{port}/0"
        f"?ssl_cert_reqs=required&ssl_ca_certs={tmp / 'ca.pem'}"
    )
    client = redis.Redis.from_url(url)
    wait_until(lambda: _ping(client), 20, 0.05, "the TLS Redis")
    client.close()
    return proc, url


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    if shutil.which("openssl") is None or shutil.which("redis-server") is None:
        pytest.fail("openssl and redis-server are needed (bash .ci/setup installs them)")
    started: list[ManagedProcess] = []
    try:
        redis_proc, url = tls_redis(tmp_path)
        started.append(redis_proc)
        settings = Settings(redis_url=url, key_prefix="fs" + uuid.uuid4().hex[:8])
        workers = {}
        for host in ("hostA", "hostB"):
            env = worker_env(
                settings, {"HOST_ROLE": f"role-{host}", "CLOUDOPS_SHUTDOWN_GRACE_S": "1"}
            )
            w = start_process(
                cloudops_argv(
                    "worker", "--queues", f"{host},cloudops", "--hostname", f"{host}@fleet",
                    "--concurrency", "2",
                ),
                env,
                tmp_path / f"worker-{host}.log",
                host,
            )  # fmt: skip
            started.append(w)
            workers[host] = w
        relay_port, flower_port = free_port(), free_port()
        relay = start_process(
            cloudops_argv("relay", "--host", "127.0.0.1", "--port", str(relay_port)),
            worker_env(settings, {"CLOUDOPS_API_TOKENS": TOKEN}),
            tmp_path / "relay.log",
            "relay",
        )
        started.append(relay)
        flower = start_process(
            cloudops_argv(
                "flower", f"--port={flower_port}", "--address=127.0.0.1",
                f"--basic-auth={FLOWER_AUTH[0]}:{FLOWER_AUTH[1]}",
            ),
            worker_env(settings),
            tmp_path / "flower.log",
            "flower",
        )  # fmt: skip
        started.append(flower)
        for w in workers.values():
            w.wait_for_log(" ready.", 60)
        stack = Stack(
            settings,
            f"http://127.0.0.1:{relay_port}",
            f"http://127.0.0.1:{flower_port}",
            workers,
            tmp_path,
        )
        wait_until(lambda: _get(f"{stack.relay_url}/healthz") is not None, 30, 0.1, "relay")
        wait_until(
            lambda: "hostB@fleet" in (_get(f"{stack.flower_url}/api/workers?refresh=1") or {}),
            30,
            0.2,
            "flower to see the workers",
        )
        yield stack
    finally:
        for proc in reversed(started):
            proc.stop(timeout_s=10)


def _get(url: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        resp = httpx.get(url, headers=headers, auth=FLOWER_AUTH if not token else None, timeout=3)
    except httpx.HTTPError:
        return None
    return resp.json() if resp.status_code == 200 else None


def _history(stack: Stack, ex: str) -> list[dict[str, Any]]:
    """Every envelope of an ended execution, from the relay's SSE stream."""
    with httpx.stream(
        "GET",
        f"{stack.relay_url}/api/executions/{ex}/events",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    ) as stream:
        return [json.loads(line[5:]) for line in stream.iter_lines() if line.startswith("data:")]


def _wait_ended(stack: Stack, ex: str, timeout_s: float, what: str) -> dict[str, Any]:
    """The execution's record once it is no longer queued or running."""

    def ended() -> dict[str, Any]:
        rec: dict[str, Any] = _get(f"{stack.relay_url}/api/executions/{ex}", TOKEN) or {}
        return rec if rec.get("status") not in (None, "queued", "running") else {}

    record: dict[str, Any] = wait_until(ended, timeout_s, 0.1, what)
    return record


PLAYBOOK = """
name: fleet tour
steps:
  - {id: a1, name: On A, command: 'echo "step 1 on $HOST_ROLE"', queue: hostA}
  - {id: b1, name: On B, command: 'echo "step 2 on $HOST_ROLE" >&2', queue: hostB}
  - {id: a2, name: On A again, command: 'echo "step 3 on $HOST_ROLE"', queue: hostA}
"""


def test_playbook_over_two_hosts_through_the_relay_flower_and_records_agree(
    stack: Stack,
) -> None:
    playbook = stack.tmp / "tour.yml"
    playbook.write_text(PLAYBOOK)
    env = stack.env(CLOUDOPS_API_TOKEN=TOKEN)
    del env["CLOUDOPS_REDIS_URL"]  # the CLI goes through the relay only
    run = run_cloudops(
        "run",
        "--remote",
        stack.relay_url,
        "--json",
        "--playbook",
        str(playbook),
        env=env,
        timeout_s=120,
    )
    assert run.returncode == 0, run.stderr
    envelopes = [json.loads(line) for line in run.stdout.splitlines()]
    ex = envelopes[0]["executionId"]
    assert [e["id"] for e in envelopes] == list(range(1, len(envelopes) + 1))
    outputs = [e["payload"]["output"] for e in envelopes if e["event"] == "execution_output"]
    assert outputs == ["step 1 on role-hostA\n", "step 2 on role-hostB\n", "step 3 on role-hostA\n"]
    starts = [e["payload"] for e in envelopes if e["event"] == "playbook_step_start"]
    assert [s["worker"] for s in starts] == ["hostA@fleet", "hostB@fleet", "hostA@fleet"]

    # The relay's record and history agree with what the CLI saw.
    record = _get(f"{stack.relay_url}/api/executions/{ex}", TOKEN)
    assert record["status"] == "completed" and record["commandType"] == "playbook"
    assert [s["worker"] for s in record["steps"]] == ["hostA@fleet", "hostB@fleet", "hostA@fleet"]
    assert [s["status"] for s in record["steps"]] == ["completed"] * 3
    assert _history(stack, ex) == envelopes

    # Flower lists every step task with its worker and final state.
    def flower_tasks() -> dict[str, Any]:
        tasks = _get(f"{stack.flower_url}/api/tasks") or {}
        mine = {k: v for k, v in tasks.items() if k.startswith(ex)}
        done = len(mine) == 3 and all(v["state"] == "SUCCESS" for v in mine.values())
        return mine if done else {}

    tasks = wait_until(flower_tasks, 30, 0.2, "flower to list the three step tasks")
    by_step = {k.rsplit(".", 1)[-1]: v for k, v in tasks.items()}
    assert {k: v["worker"] for k, v in by_step.items()} == {
        "s1": "hostA@fleet",
        "s2": "hostB@fleet",
        "s3": "hostA@fleet",
    }
    assert {v["name"] for v in tasks.values()} == {"cloudops.run_playbook_step"}


def test_worker_stopped_with_sigterm_ends_its_command_cleanly(stack: Stack) -> None:
    marker = f"300.{uuid.uuid4().int % 10**8:08d}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    body = {"commandType": "script", "command": f"echo begin; sleep {marker}; echo never"}
    ex = httpx.post(f"{stack.relay_url}/api/executions", json=body, headers=headers).json()[
        "executionId"
    ]
    wait_until(lambda: live_pids_with(marker), 20, what="the long command to start")
    record = _get(f"{stack.relay_url}/api/executions/{ex}", TOKEN)
    worker = stack.workers["hostA" if record["worker"] == "hostA@fleet" else "hostB"]
    t0 = time.monotonic()
    worker.proc.send_signal(15)  # warm shutdown, as systemctl stop / docker stop do

    rec = _wait_ended(stack, ex, 30, "the execution to end")
    # CLOUDOPS_SHUTDOWN_GRACE_S=1 here: then the command is stopped cleanly, not orphaned.
    assert rec["status"] == "failed" and "worker shut down" in rec["error"]
    assert worker.proc.wait(30) is not None
    assert time.monotonic() - t0 < 30
    assert live_pids_with(marker) == []
    output = httpx.get(f"{stack.relay_url}/api/executions/{ex}/output", headers=headers).text
    assert output == "begin\n"


def test_cli_remote_gives_the_embedded_events_and_fleet_mode_speaks_tls(stack: Stack) -> None:
    from tests.cli.test_cli import comparable
    from tests.helpers import embedded_env

    command = "echo one; sleep 0.1; echo two >&2; sleep 0.1; printf 'no newline'; exit 4"
    embedded = run_cloudops("run", "--json", "--", command, env=embedded_env())
    remote_env = stack.env(CLOUDOPS_API_TOKEN=TOKEN)
    del remote_env["CLOUDOPS_REDIS_URL"]
    remote = run_cloudops(
        "run", "--remote", stack.relay_url, "--json", "--", command, env=remote_env
    )
    assert embedded.returncode == remote.returncode == 4, remote.stderr
    assert comparable(embedded.stdout.splitlines()) == comparable(remote.stdout.splitlines())
    ex = json.loads(remote.stdout.splitlines()[0])["executionId"]
    # The CLI in fleet mode, straight to the TLS Redis with its password.
    listed = run_cloudops("ls", "--json", env=stack.env())
    assert listed.returncode == 0, listed.stderr
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert any(r["executionId"] == ex and r["status"] == "failed" for r in records)


def test_big_output_goes_through_the_tls_redis_whole(stack: Stack) -> None:
    """1.3 MB of output: batches of big chunks take the publisher's MULTI/EXEC path, which over
    TLS sends through redis-py's socket loop instead of sendmsg."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    body = {"commandType": "script", "command": "seq 200000"}
    ex = httpx.post(f"{stack.relay_url}/api/executions", json=body, headers=headers).json()[
        "executionId"
    ]

    assert _wait_ended(stack, ex, 60, "seq to end")["status"] == "completed"
    output = httpx.get(f"{stack.relay_url}/api/executions/{ex}/output", headers=headers).text
    assert output == "".join(f"{i}\n" for i in range(1, 200001))
    ids = [e["id"] for e in _history(stack, ex)]
    assert ids == list(range(1, len(ids) + 1))
    assert len(ids) >= 2 + 1_288_895 // 65536  # started, the chunks, complete
