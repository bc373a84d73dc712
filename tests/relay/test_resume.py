"""Resume: 200 disconnects at random points during a 100,000-line output, each resumed with
Last-Event-ID, reassemble the output byte for byte, with contiguous ids and no duplicate."""

from __future__ import annotations

import json
import random
import statistics
import time
import uuid

import httpx
import pytest
import redis

from events.settings import Settings
from tests.relay.conftest import StartRelay
from tests.relay.helpers import RelayProcess, sse_events, wait_for
from tests.relay.publish import ScriptedRun

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LINES = 100_000
DISCONNECTS = 200


def make_lines(rng: random.Random) -> list[str]:
    # Some lines carry multi-byte characters: the reassembly is compared as bytes.
    words = ["ok", "état", "✓ done", "naïve", "日本", "x" * 30]
    return [f"{i:06d} {rng.choice(words)}\n" for i in range(1, LINES + 1)]


def test_resume_after_200_disconnects_during_100k_lines(
    relay: RelayProcess, api: httpx.Client, settings: Settings, rclient: redis.Redis
) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    lines = make_lines(rng)
    chunks: list[str] = []
    i = 0
    while i < LINES:
        n = rng.randint(1, 5)
        chunks.append("".join(lines[i : i + n]))
        i += n
    ex = "ex_resume_" + uuid.uuid4().hex[:8]
    run = ScriptedRun(rclient, settings, ex, chunks, rate_per_s=2000)
    total = run.total_events
    cuts = sorted(rng.sample(range(1, total - 1), DISCONNECTS))
    run.start()

    ids: list[int] = []
    output: list[str] = []
    reconnect_s: list[float] = []
    cut_at: list[float] = []
    last = 0
    connections = 0
    while not ids or ids[-1] != total:
        connections += 1
        t0 = time.monotonic()
        headers = {"Last-Event-ID": str(last)}
        with api.stream("GET", f"/api/executions/{ex}/events", headers=headers) as stream:
            assert stream.status_code == 200
            for m in sse_events(stream.iter_lines()):
                if len(reconnect_s) < connections:
                    reconnect_s.append(time.monotonic() - t0)
                assert m.id == last + 1, f"seed {seed}: got id {m.id} after {last}"
                env = json.loads(m.data)
                assert env["id"] == m.id and env["executionId"] == ex
                last = m.id
                ids.append(m.id)
                if env["event"] == "execution_output":
                    output.append(env["payload"]["output"])
                if cuts and last >= cuts[0]:
                    while cuts and cuts[0] <= last:
                        cuts.pop(0)
                    cut_at.append(time.monotonic())
                    break  # leaving the block drops the connection mid-stream
    run.join(60)
    assert run.error is None

    assert connections == DISCONNECTS + 1
    assert run.finished_at is not None
    live_cuts = sum(1 for t in cut_at if t < run.finished_at)
    # The reader keeps up with the writer: most disconnects happen while output is published.
    assert live_cuts >= DISCONNECTS // 2, f"only {live_cuts} disconnects during the output"
    assert ids == list(range(1, total + 1))
    assert "".join(output).encode() == "".join(lines).encode()

    # Nothing left behind in the relay: no client, no channel.
    def clean() -> bool:
        text = api.get("/metrics").text
        return (
            'cloudops_connected_clients{kind="sse"} 0' in text
            and "cloudops_relay_pubsub_channels 0" in text
        )

    wait_for(clean, 10.0, 0.1, "the relay to forget its clients")
    print(
        f"\nresume: seed {seed}, {total} events, {connections} connections"
        f" ({live_cuts} cut while the output was being published),"
        f" first event after reconnect: median {statistics.median(reconnect_s) * 1000:.1f} ms,"
        f" max {max(reconnect_s) * 1000:.1f} ms"
    )


def test_after_beyond_the_end_of_a_running_execution_closes_with_it(start: StartRelay) -> None:
    """Issue 20 finding 9: `after` past the last id of a running execution waited forever
    (or, at best, for the idle refill: 15 s by default, 30 s here)."""
    from tests.relay.test_rest import submit

    relay = start(env={"RELAY_TEST_IDLE_REFILL_S": "30"})
    api = relay.client()
    ex = submit(api, "lines=3 hold=1")
    wait_for(lambda: api.get(f"/api/executions/{ex}").json()["status"] == "running", 10.0)
    with api.stream("GET", f"/api/executions/{ex}/events", params={"after": 1000}) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()
        assert next(lines).startswith("retry:")
        api.post(f"/api/executions/{ex}/cancel").raise_for_status()
        t0 = time.monotonic()
        rest = [line for line in lines if line and not line.startswith(":")]
        took_s = time.monotonic() - t0
    assert rest == [], "nothing after id 1000: no event, and the stream ends"
    assert took_s < 5, f"closed {took_s:.1f} s after the end"
    # Resumed at or past the end: 204, nothing to reconnect for.
    assert api.get(f"/api/executions/{ex}/events", params={"after": 1000}).status_code == 204
    api.close()
