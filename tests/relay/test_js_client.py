"""cloudops-events.js under Node (its WebSocket and fetch, as in a browser): Tauri-shaped
`listen`/`once`/unlisten with the spec's field names, and a relay restart mid-stream followed
by a resume with no gap and no duplicate."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
import uuid
from typing import Any

import pytest
import redis

from api.app import STATIC_DIR
from events.keys import Keys
from events.lifecycle import Reporter
from events.models import ExecutionOptions, utc_now
from events.publisher import Publisher
from events.record_store import RecordStore
from events.settings import Settings
from events.vocabulary import CommandType, HostStatus, Status
from tests.relay.conftest import StartRelay
from tests.relay.helpers import REPO, RelayProcess, free_port
from tests.relay.publish import ScriptedRun

NODE = shutil.which("node")
SCRIPT = REPO / "tests" / "relay" / "js" / "client_check.mjs"
MODULE_URL = (STATIC_DIR / "cloudops-events.js").as_uri()
NODE_FLAGS = ["--experimental-websocket", "--no-warnings"]


def _node_has_websocket() -> bool:
    if NODE is None:
        return False
    probe = "process.exit(typeof WebSocket === 'function' ? 0 : 1)"
    return subprocess.run([NODE, *NODE_FLAGS, "-e", probe], timeout=30).returncode == 0


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not _node_has_websocket(), reason="needs Node >= 20 with WebSocket"),
]


class NodeProcess:
    def __init__(self, *args: str) -> None:
        assert NODE is not None
        cmd = [NODE, *NODE_FLAGS, str(SCRIPT), MODULE_URL, *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def next(self, timeout_s: float = 30.0) -> dict[str, Any]:
        msg = self.lines.get(timeout=timeout_s)
        if msg is None:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"node exited ({self.proc.wait()}): {err}")
        assert msg.get("ok", True), msg
        return msg

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def test_listen_once_and_unlisten_like_tauri(relay: RelayProcess, token: str) -> None:
    node = NodeProcess(relay.base_url, token, "api")
    try:
        listened = node.next()["events"]
        assert [e["id"] for e in listened] == [2, 3, 4]
        for e in listened:
            assert set(e) == {"event", "id", "payload"}  # what Tauri's listen hands over
            assert e["event"] == "execution_output"
            assert {"executionId", "output", "stream", "timestamp"} <= set(e["payload"])
        assert [e["payload"]["output"] for e in listened] == [
            "line 000001\n",
            "line 000002\n",
            "line 000003\n",
        ]
        assert node.next() == {"step": "unlisten", "delivered": 0}
        assert node.next() == {"step": "once", "count": 1}
        assert node.next() == {"step": "started", "ids": [1]}
        assert node.next() == {"step": "replay", "ids": [2, 3, 4]}
        assert node.next() == {"ok": True}
    finally:
        node.stop()


def test_relay_restart_mid_stream_resumes_without_gap(
    start: StartRelay, settings: Settings, rclient: redis.Redis, token: str
) -> None:
    port = free_port()
    relay = start(port=port)
    ex = "ex_js_" + uuid.uuid4().hex[:8]
    chunks = [f"line {n:05d} ✓\n" for n in range(1, 1501)]
    run = ScriptedRun(rclient, settings, ex, chunks, rate_per_s=150)
    node = NodeProcess(relay.base_url, token, "follow", ex)
    received: list[dict[str, Any]] = []
    try:
        assert node.next() == {"ready": True}
        run.start()
        while len(received) < 300:
            received.append(node.next())
        t0 = time.monotonic()
        relay.stop()  # mid-stream: the output goes on, into Redis only
        start(port=port)
        while True:
            msg = node.next()
            if msg.get("ok"):
                break
            received.append(msg)
        downtime_s = time.monotonic() - t0
    finally:
        node.stop()
    run.join(30)
    ids = [m["id"] for m in received]
    assert ids == list(range(2, run.total_events + 1))  # no gap, no duplicate
    outputs = [m["payload"]["output"] for m in received if m["event"] == "execution_output"]
    assert "".join(outputs) == "".join(chunks)
    print(f"\nJS client: resumed after a relay restart ({downtime_s:.1f} s until the end)")


def test_listen_delivers_the_fan_out_events(
    relay: RelayProcess, settings: Settings, rclient: redis.Redis, token: str
) -> None:
    ex = "ex_js_" + uuid.uuid4().hex[:8]
    keys = Keys(settings.key_prefix)
    RecordStore(rclient, keys, settings).create(
        ex, command="fleet", command_type=CommandType.PLAYBOOK, options={}, queued_at=utc_now()
    )
    publisher = Publisher(rclient, keys, settings)
    node = NodeProcess(relay.base_url, token, "follow", ex)
    try:
        assert node.next() == {"ready": True}
        r = Reporter(publisher, ex, worker="web1@eu")
        started = r.started("fleet", CommandType.PLAYBOOK, ExecutionOptions())
        r.step_start(
            step_id="s",
            step_number=1,
            total_steps=1,
            step_name="s",
            command="x",
            attempt=1,
            hosts=["web1@eu"],
        )
        r.host = "web1@eu"
        r.host_start(step_id="s", step_number=1, attempt=1)
        r.output("stdout", "hi\n")
        r.host_complete(
            step_id="s",
            step_number=1,
            host="web1@eu",
            status=HostStatus.COMPLETED,
            exit_code=0,
            duration_ms=5,
            error=None,
        )
        r.complete(Status.COMPLETED, started, exit_code=0)
        publisher.flush(10)
        got = [node.next() for _ in range(4)]
    finally:
        node.stop()
        publisher.close(timeout_s=5)
    assert [(m["id"], m["event"]) for m in got] == [
        (3, "playbook_host_start"),
        (4, "execution_output"),
        (5, "playbook_host_complete"),
        (6, "execution_complete"),
    ]
    assert got[0]["payload"] == {
        "executionId": ex,
        "stepId": "s",
        "stepNumber": 1,
        "host": "web1@eu",
        "attempt": 1,
    }
    assert got[1]["payload"]["host"] == "web1@eu"
    assert got[2]["payload"]["status"] == "completed" and got[2]["payload"]["success"] is True
