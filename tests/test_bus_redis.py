"""The event bus against a real Redis: ids, replay, lost connections, restarts, caps, overflow.

Most tests use the shared Redis with a key prefix of their own (conftest). The restart and
overflow tests start a private `redis-server` without persistence, which they stop and start
again; nothing of it outlives the test.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from events.batches import ALL_CHECK_S, DIRECT_MIN_BYTES
from events.clients import make_redis
from events.keys import Keys
from events.models import (
    ExecutionCancelledPayload,
    ExecutionCompletePayload,
    ExecutionOptions,
    ExecutionOutputPayload,
    ExecutionStartedPayload,
    PlaybookStepStartPayload,
    WireModel,
    utc_now,
)
from events.publisher import Publisher
from events.record_store import RecordStore
from events.settings import Settings
from events.subscriber import Follower, output_tail, read_history
from events.vocabulary import CommandType
from events.wire import RawEvent
from tests.helpers import PrivateRedis, ThreadFollower, encode_parts, wait_until

pytestmark = pytest.mark.integration

T0 = "2026-03-04T05:06:07.000008Z"


# -- payloads --------------------------------------------------------------------------------


def started(ex: str) -> ExecutionStartedPayload:
    return ExecutionStartedPayload(
        execution_id=ex,
        command="seq 1000",
        command_type=CommandType.SCRIPT,
        started_at=T0,
        options=ExecutionOptions(),
    )


def out(ex: str, text: str, stream: str = "stdout") -> ExecutionOutputPayload:
    return ExecutionOutputPayload(
        execution_id=ex,
        output=text,
        stream=stream,
        timestamp=utc_now(),
    )


def complete(
    ex: str, status: str = "completed", exit_code: int | None = 0
) -> ExecutionCompletePayload:
    return ExecutionCompletePayload(
        execution_id=ex,
        status=status,
        started_at=T0,
        completed_at=utc_now(),
        duration_ms=12,
        exit_code=exit_code,
    )


def doc(ev: RawEvent) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ev.data)
    return data


def outputs(events: list[RawEvent]) -> list[str]:
    return [doc(e)["payload"]["output"] for e in events if e.event == "execution_output"]


def assert_contiguous(events: list[RawEvent], first: int = 1) -> None:
    ids = [e.id for e in events]
    assert ids == list(range(first, first + len(events))), f"ids not contiguous: {ids[:20]}..."
    # The stream entry id and the id inside the envelope agree.
    assert all(doc(e)["id"] == e.id for e in events)


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def new_client() -> Iterator[Callable[[str], redis.Redis]]:
    made: list[redis.Redis] = []

    def make(url: str) -> redis.Redis:
        client = make_redis(url)
        made.append(client)
        return client

    yield make
    for c in made:
        c.close()


def set_path(pub: Publisher, path: str, index: int) -> Publisher:
    """Send every batch through the Lua script, or every batch the direct way (MULTI/EXEC), or
    (mixed) alternate between the two by publisher, which must agree on ids and caps."""
    direct = path == "direct" or (path == "mixed" and index % 2 == 1)
    pub.direct_min_bytes = 0 if direct else 1 << 62
    return pub


@pytest.fixture(params=["lua", "direct", "mixed"])
def publish_path(request: pytest.FixtureRequest) -> str:
    path: str = request.param
    return path


@pytest.fixture
def new_publisher(
    new_client: Callable[[str], redis.Redis], keys: Keys, publish_path: str
) -> Iterator[Callable[..., Publisher]]:
    made: list[Publisher] = []

    def make(settings: Settings, url: str | None = None) -> Publisher:
        pub = Publisher(new_client(url or settings.redis_url or ""), keys, settings)
        set_path(pub, publish_path, len(made))
        made.append(pub)
        return pub

    yield make
    for p in made:
        p.close(timeout_s=5.0)


@pytest.fixture
def collectors() -> Iterator[Callable[[Follower], ThreadFollower]]:
    made: list[ThreadFollower] = []

    def make(follower: Follower) -> ThreadFollower:
        c = ThreadFollower(follower)
        made.append(c)
        return c

    yield make
    for c in made:
        c.follower.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path, persistent=False)
    server.start()
    yield server
    server.kill()


# -- ids and ordering ------------------------------------------------------------------------


def test_three_publishers_of_one_execution_get_contiguous_ids(
    settings: Settings,
    keys: Keys,
    rclient: redis.Redis,
    new_publisher: Callable[..., Publisher],
) -> None:
    """As the steps of one playbook on three hosts would: one id sequence, no hole."""
    ex = "ex_three"
    per_publisher = 400
    publishers = [new_publisher(settings) for _ in range(3)]
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []

    def produce(k: int, pub: Publisher) -> None:
        try:
            barrier.wait(5.0)
            for i in range(per_publisher):
                pub.publish(out(ex, f"p{k} {i}\n"))
                if i % 37 == 0:
                    pub.flush(10.0)  # let the others overtake now and then
            assert pub.flush(30.0)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=produce, args=(k, p)) for k, p in enumerate(publishers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60.0)
    assert not errors, errors
    assert publishers[0].publish(complete(ex), wait=True) == 3 * per_publisher + 1

    history = read_history(rclient, keys, ex)
    assert len(history) == 3 * per_publisher + 1
    assert_contiguous(history)
    assert history[-1].event == "execution_complete"
    texts = outputs(history)
    for k in range(3):
        mine = [int(t.split()[1]) for t in texts if t.startswith(f"p{k} ")]
        assert mine == list(range(per_publisher)), f"publisher {k} out of order"
    # The three really did interleave (otherwise this test proves little).
    owners = [t.split()[0] for t in texts]
    switches = sum(1 for a, b in itertools.pairwise(owners) if a != b)
    assert switches >= 3


def test_every_event_goes_to_its_channel_and_the_all_channel(
    settings: Settings,
    keys: Keys,
    new_client: Callable[[str], redis.Redis],
    new_publisher: Callable[..., Publisher],
) -> None:
    sub = new_client(settings.redis_url or "").pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    sub.subscribe(keys.channel("ex_a"), keys.channel_all())
    try:
        pub = new_publisher(settings)
        pub.publish(started("ex_a"))
        pub.publish(started("ex_b"))
        pub.publish(out("ex_a", "x"))
        assert pub.flush(10.0)
        got: list[tuple[str, int, str]] = []

        def three_on_all() -> bool:
            msg = sub.get_message(timeout=0.1)
            if msg is not None and msg["type"] == "message":
                ev = RawEvent.from_json(msg["data"])
                got.append((msg["channel"].decode(), ev.id, doc(ev)["executionId"]))
            return sum(1 for c, _, _ in got if c == keys.channel_all()) == 3 and len(got) == 5

        wait_until(three_on_all, 10.0, interval_s=0.0, what="5 pub/sub messages")
        mine = [(i, e) for c, i, e in got if c == keys.channel("ex_a")]
        everyone = sorted((e, i) for c, i, e in got if c == keys.channel_all())
        assert mine == [(1, "ex_a"), (2, "ex_a")]
        assert everyone == [("ex_a", 1), ("ex_a", 2), ("ex_b", 1)]
    finally:
        sub.close()


def test_late_subscriber_gets_all_1000_once_in_order(
    settings: Settings,
    keys: Keys,
    rclient: redis.Redis,
    new_client: Callable[[str], redis.Redis],
    new_publisher: Callable[..., Publisher],
    collectors: Callable[[Follower], ThreadFollower],
) -> None:
    ex = "ex_late"
    pub = new_publisher(settings)
    pub.publish(started(ex))
    for i in range(1, 500):
        pub.publish(out(ex, f"{i}\n"))
    assert pub.flush(30.0)

    follower = Follower(
        new_client(settings.redis_url or ""), keys, ex, after=0, poll_interval_s=0.2
    )
    col = collectors(follower)
    # It has replayed the history and is live before the second half is published.
    wait_until(lambda: len(col.events) >= 500, 20.0, what="the replay of 500 events")
    for i in range(500, 999):
        pub.publish(out(ex, f"{i}\n"))
    pub.publish(complete(ex))
    events = col.join(30.0, must_end=True)

    assert len(events) == 1000
    assert_contiguous(events)
    assert events[0].event == "execution_started"
    assert events[-1].event == "execution_complete" and events[-1].terminal
    assert outputs(events) == [f"{i}\n" for i in range(1, 999)]
    assert [e.data for e in events] == [e.data for e in read_history(rclient, keys, ex)]


def test_follower_resumes_after_n(
    settings: Settings,
    keys: Keys,
    new_client: Callable[[str], redis.Redis],
    new_publisher: Callable[..., Publisher],
) -> None:
    ex = "ex_after"
    pub = new_publisher(settings)
    pub.publish(started(ex))
    for i in range(20):
        pub.publish(out(ex, f"{i}\n"))
    pub.publish(complete(ex))
    assert pub.flush(10.0)
    events = list(Follower(new_client(settings.redis_url or ""), keys, ex, after=17))
    assert [e.id for e in events] == [18, 19, 20, 21, 22]
    assert events[-1].terminal


def _kill(admin: redis.Redis, client_name: str, kind: str = "pubsub") -> int:
    """`CLIENT KILL TYPE pubsub` (or normal), narrowed to the connections of one of our clients:
    the shared Redis also serves other suites' subscribers."""
    killed = 0
    for c in admin.client_list(_type=kind):
        if c.get("name") == client_name:
            killed += int(admin.client_kill_filter(_id=c["id"], _type=kind))
    return killed


def test_follower_survives_its_pubsub_connection_being_killed(
    settings: Settings,
    keys: Keys,
    rclient: redis.Redis,
    new_publisher: Callable[..., Publisher],
    collectors: Callable[[Follower], ThreadFollower],
) -> None:
    ex = "ex_kill"
    name = f"{settings.key_prefix}-follower"
    follower_client = make_redis(settings.redis_url or "", client_name=name)
    pub = new_publisher(settings)
    killed = threading.Event()
    kills: list[int] = []
    published: list[int] = []

    def produce() -> None:
        pub.publish(started(ex))
        i = 0
        after_kill = 0
        # Keep publishing until well after the kill, so that events go out while the follower
        # is disconnected and reconnecting.
        while after_kill < 1500 and i < 200_000:
            pub.publish(out(ex, f"{i}\n"))
            i += 1
            if killed.is_set():
                after_kill += 1
            if i % 100 == 0:
                pub.flush(10.0)
        pub.publish(complete(ex))
        published.append(i)

    try:
        col = collectors(Follower(follower_client, keys, ex, poll_interval_s=0.2))
        producer = threading.Thread(target=produce)
        producer.start()
        wait_until(lambda: len(col.events) >= 300, 20.0, what="300 live events")
        kills.append(_kill(rclient, name))
        killed.set()
        # Kill again if the follower reconnects while the stream is still going.
        wait_until(lambda: len(col.events) >= 600, 20.0, what="600 events")
        if producer.is_alive():
            kills.append(_kill(rclient, name))
        producer.join(60.0)
        events = col.join(30.0, must_end=True)
    finally:
        follower_client.close()

    assert kills[0] >= 1, "the pub/sub connection was not killed"
    # The loss was noticed: a ConnectionError (reconnect) or an id jump (refill from history).
    assert col.follower.reconnects > 0 or col.follower.refills > 1
    n = published[0]
    assert len(events) == n + 2
    assert_contiguous(events)
    assert outputs(events) == [f"{i}\n" for i in range(n)]
    assert events[-1].terminal
    assert len(read_history(rclient, keys, ex)) == n + 2


def test_publisher_connection_killed_mid_pipeline_makes_no_duplicate(
    settings: Settings,
    keys: Keys,
    rclient: redis.Redis,
    publish_path: str,
) -> None:
    """A batch whose connection dies after Redis ran part of it is sent again; the events that
    already went through are recognised and not stored twice."""
    ex = "ex_pubkill"
    name = f"{settings.key_prefix}-publisher"
    client = make_redis(settings.redis_url or "", client_name=name)
    pub = set_path(Publisher(client, keys, settings), publish_path, 1)
    total = 6000
    kills = 0
    try:
        pub.publish(started(ex))
        for i in range(total):
            pub.publish(out(ex, f"{i}\n"))
            if i % 500 == 250:
                kills += _kill(rclient, name, "normal")
        pub.publish(complete(ex))
        assert pub.flush(30.0)
    finally:
        pub.close(5.0)
        client.close()
    assert kills >= 1
    history = read_history(rclient, keys, ex)
    assert_contiguous(history)
    assert outputs(history) == [f"{i}\n" for i in range(total)]
    assert history[-1].terminal


# -- a Redis restart ------------------------------------------------------------------------


def test_redis_restart_loses_nothing_published_after_it_or_buffered_before(
    private_redis: PrivateRedis,
    key_prefix: str,
    new_client: Callable[[str], redis.Redis],
    new_publisher: Callable[..., Publisher],
    collectors: Callable[[Follower], ThreadFollower],
) -> None:
    ex = "ex_restart"
    settings = Settings(redis_url=private_redis.url, key_prefix=key_prefix)
    keys = Keys(key_prefix)
    pub = new_publisher(settings)
    # A follower that lives through the restart, beside one started after it.
    early = collectors(Follower(new_client(private_redis.url), keys, ex, poll_interval_s=0.2))

    pub.publish(started(ex))
    for i in range(99):
        pub.publish(out(ex, f"before {i}\n"))
    assert pub.flush(10.0)
    wait_until(lambda: len(early.events) >= 100, 20.0, what="100 events before the restart")

    private_redis.kill()
    slowest_s = 0.0
    for i in range(200):
        t = time.monotonic()
        assert pub.publish(out(ex, f"down {i}\n")) is None  # never raises, never blocks
        slowest_s = max(slowest_s, time.monotonic() - t)
    assert slowest_s < 0.5
    wait_until(lambda: not pub.connected, 10.0, what="the publisher to notice Redis is gone")
    assert not pub.flush(0.2), "nothing can have reached a dead Redis"

    private_redis.start()
    for i in range(200):
        pub.publish(out(ex, f"after {i}\n"))
    pub.publish(complete(ex))
    assert pub.flush(30.0)
    assert pub.connected

    late = collectors(Follower(new_client(private_redis.url), keys, ex, poll_interval_s=0.2))
    expected = [f"down {i}\n" for i in range(200)] + [f"after {i}\n" for i in range(200)]
    after_restart = late.join(30.0, must_end=True)
    # Redis came back empty (no persistence): ids continue from 100, they do not restart at 1.
    assert_contiguous(after_restart, first=101)
    assert outputs(after_restart) == expected
    assert after_restart[-1].terminal
    across = early.join(30.0, must_end=True)
    assert_contiguous(across)
    assert outputs(across) == [f"before {i}\n" for i in range(99)] + expected
    assert across[-1].terminal


def test_redis_restart_while_publishing_continues_the_ids(
    private_redis: PrivateRedis,
    key_prefix: str,
    new_client: Callable[[str], redis.Redis],
    new_publisher: Callable[..., Publisher],
) -> None:
    """Killed while batches are in flight: what Redis had is gone (no persistence), everything
    not yet acknowledged is sent again after the restart, with ids continuing."""
    ex = "ex_restart_live"
    settings = Settings(redis_url=private_redis.url, key_prefix=key_prefix)
    keys = Keys(key_prefix)
    admin = new_client(private_redis.url)
    pub = new_publisher(settings)
    total = 4000
    stopped = threading.Event()
    restarted = threading.Event()

    def produce() -> None:
        pub.publish(started(ex))
        for i in range(total):
            pub.publish(out(ex, f"{i}\n"))
            if i == 299:
                assert pub.flush(10.0)  # ids 1..301 acknowledged: the floor is at least 301
            if i == total // 2:
                # Up to here batches race the stop (some in flight); the next thousand are
                # surely sent while Redis is down, the rest after it is back.
                stopped.wait(30.0)
            if i == total // 2 + 1000:
                restarted.wait(30.0)
        pub.publish(complete(ex))

    producer = threading.Thread(target=produce)
    producer.start()

    def stored() -> int:
        try:
            return int(admin.xlen(keys.history(ex)))
        except redis.ConnectionError:
            return 0

    wait_until(lambda: stored() >= 600, 20.0, what="600 stored events")
    private_redis.kill()
    stopped.set()
    wait_until(lambda: not pub.connected, 10.0, what="the publisher to notice Redis is gone")
    private_redis.start()
    restarted.set()
    producer.join(60.0)
    assert pub.flush(30.0)

    history = read_history(admin, keys, ex)
    # The new Redis holds everything from the first event the publisher had not seen
    # acknowledged (its floor) on; a batch that the old Redis ran but could not acknowledge is
    # stored again under the same ids, so every id still names the same event.
    first = history[0].id
    assert first >= 302, "ids restarted instead of continuing"
    assert_contiguous(history, first=first)
    # Event n (1-based) is the n-th published: `started`, then output i has id i + 2.
    assert outputs(history) == [f"{i}\n" for i in range(first - 2, total)]
    assert history[-1].terminal


# -- terminal event, record, output cap, overflow --------------------------------------------


def test_exactly_one_execution_complete_and_record_fields(
    settings: Settings,
    keys: Keys,
    rclient: redis.Redis,
    new_publisher: Callable[..., Publisher],
) -> None:
    ex = "ex_once"
    store = RecordStore(rclient, keys, settings)
    store.create(ex, command="true", command_type=CommandType.SCRIPT, options={}, queued_at=T0)
    assert store.get(ex) is not None and store.get(ex).status == "queued"  # type: ignore[union-attr]
    pub = new_publisher(settings)
    other_host = new_publisher(settings)

    assert pub.publish(started(ex), record={"status": "running", "startedAt": T0}, wait=True) == 1
    assert store.field(ex, "status") == "running"
    pub.publish(out(ex, "hello\n"))
    first = complete(ex, exit_code=0)
    record: dict[str, str | int] = {
        "status": "completed",
        "exitCode": 0,
        "durationMs": 12,
        "completedAt": T0,
    }
    assert pub.publish(first, record=record, wait=True) == 3

    # After the end: dropped, by this publisher and by any other host's, records untouched.
    assert pub.publish(out(ex, "late\n"), wait=True) is None
    assert pub.publish(complete(ex, "failed", 1), record={"status": "failed"}, wait=True) is None
    assert other_host.publish(out(ex, "other\n"), wait=True) is None
    cancel = ExecutionCancelledPayload(
        execution_id=ex, cancelled_at=utc_now(), reason="late", partial_output=""
    )
    assert other_host.publish(cancel, record={"status": "cancelled"}, wait=True) is None
    assert other_host.publish(complete(ex, "cancelled"), wait=True) is None

    history = read_history(rclient, keys, ex)
    assert [e.event for e in history] == [
        "execution_started",
        "execution_output",
        "execution_complete",
    ]
    assert doc(history[-1])["payload"] == first.wire()
    rec = store.get(ex)
    assert rec is not None
    assert (rec.status, rec.exit_code, rec.duration_ms, rec.started_at, rec.completed_at) == (
        "completed",
        0,
        12,
        T0,
        T0,
    )
    assert store.field(ex, "completeId") == "3"


def _envelope_chars(payload: WireModel) -> int:
    head, tail = encode_parts("execution_output", payload.execution_id, payload)  # type: ignore[attr-defined]
    return len(head) + len(tail)


def test_output_cap_marks_the_crossing_chunk_and_keeps_the_end(
    settings: Settings,
    keys: Keys,
    rclient: redis.Redis,
    new_publisher: Callable[..., Publisher],
) -> None:
    ex = "ex_cap"
    capped = settings.with_(max_output_bytes=5000)
    pub = new_publisher(capped)
    store = RecordStore(rclient, keys, capped)
    chunks = [out(ex, f"{i:04d} " + "x" * 200 + "\n") for i in range(60)]
    used, crossing = 0, -1
    for n, c in enumerate(chunks):
        used += _envelope_chars(c)
        if used > 5000:
            crossing = n
            break
    assert 0 < crossing < 40

    pub.publish(started(ex))
    for c in chunks:
        pub.publish(c)
    assert pub.flush(10.0)
    # A second host's output after the cap is dropped as well.
    other = new_publisher(capped)
    assert other.publish(out(ex, "other host\n"), wait=True) is None
    pub.publish(complete(ex), record={"status": "completed"})
    assert pub.flush(10.0)

    history = read_history(rclient, keys, ex)
    assert_contiguous(history)
    outs = [doc(e)["payload"] for e in history if e.event == "execution_output"]
    assert [p["output"] for p in outs] == [c.output for c in chunks[: crossing + 1]]
    assert [p.get("truncated") for p in outs] == [None] * crossing + [True]
    assert history[-1].event == "execution_complete"
    assert store.field(ex, "outputTruncated") == "1"
    assert store.field(ex, "status") == "completed"
    # The publisher learnt it: later output is not even sent.
    assert pub.publish(out(ex, "more\n")) is None


def test_overflow_while_redis_is_down_is_counted_in_dropped_bytes(
    private_redis: PrivateRedis,
    key_prefix: str,
    new_client: Callable[[str], redis.Redis],
    new_publisher: Callable[..., Publisher],
) -> None:
    ex = "ex_overflow"
    bound = 6000
    settings = Settings(redis_url=private_redis.url, key_prefix=key_prefix).with_(
        publish_buffer_bytes=bound
    )
    keys = Keys(key_prefix)
    pub = new_publisher(settings)
    pub.publish(started(ex))
    assert pub.flush(10.0)
    private_redis.kill()

    # Multi-byte text: droppedBytes counts UTF-8 bytes, not characters.
    texts = [f"{i:03d} " + "é" * 150 + "\n" for i in range(40)]
    controls: list[WireModel] = []
    for i, t in enumerate(texts):
        pub.publish(out(ex, t))
        if i % 10 == 9:
            step = PlaybookStepStartPayload(
                execution_id=ex,
                step_id=f"s{i}",
                step_number=i // 10 + 1,
                total_steps=4,
                step_name=f"step {i}",
                command="x" * 3000,
            )
            controls.append(step)
            pub.publish(step)
    wait_until(lambda: not pub.connected, 10.0, what="the publisher to notice Redis is gone")

    private_redis.start()
    assert pub.flush(30.0)
    pub.publish(out(ex, "back\n"))
    pub.publish(complete(ex))
    assert pub.flush(30.0)

    history = read_history(new_client(private_redis.url), keys, ex)
    assert_contiguous(history, first=2)
    # Control events are never dropped, whatever the buffer holds.
    steps = [doc(e)["payload"]["stepId"] for e in history if e.event == "playbook_step_start"]
    assert steps == [f"s{i}" for i in range(9, 40, 10)]
    assert history[-1].event == "execution_complete"

    stored = [doc(e)["payload"] for e in history if e.event == "execution_output"]
    kept = [p["output"] for p in stored]
    missing = [t for t in texts if t not in kept]
    assert missing, "the buffer never overflowed: the test proves nothing"
    assert kept[-1] == "back\n"
    # Each gap is announced, exactly, by the first chunk after it.
    pending = 0
    for t in [*texts, "back\n"]:
        if t not in kept:
            pending += len(t.encode())
            continue
        p = stored[kept.index(t)]
        assert p.get("droppedBytes") == (pending or None), (t, p.get("droppedBytes"), pending)
        pending = 0
    assert sum(p.get("droppedBytes", 0) for p in stored) == sum(len(t.encode()) for t in missing)


def test_direct_batches_overtaken_every_time_fall_back_to_the_script(
    settings: Settings, keys: Keys, rclient: redis.Redis
) -> None:
    """Another client writes the execution's seq counter between every WATCH and EXEC: after a
    few tries the batch goes through the Lua script, ids still contiguous."""
    ex = "ex_overtaken"
    tries: list[int] = []

    def overtake() -> None:
        tries.append(1)
        seq = rclient.get(keys.seq(ex)) or b"0"
        rclient.set(keys.seq(ex), seq)  # same value: still a write, so EXEC fails

    client = make_redis(settings.redis_url or "")
    pub = Publisher(client, keys, settings)
    pub.sender.before_exec = overtake
    pub.direct_min_bytes = 0
    try:
        pub.publish(started(ex))
        for i in range(50):
            pub.publish(out(ex, f"{i}\n"))
        pub.publish(complete(ex))
        assert pub.flush(10.0)
    finally:
        pub.close(5.0)
        client.close()
    history = read_history(rclient, keys, ex)
    assert_contiguous(history)
    assert outputs(history) == [f"{i}\n" for i in range(50)]
    assert history[-1].terminal
    assert tries and len(tries) % 4 == 0  # every batch tried 4 times, then the script


def test_output_tail_reads_the_last_characters_back_over_pages(
    settings: Settings, keys: Keys, rclient: redis.Redis, new_publisher: Callable[..., Publisher]
) -> None:
    ex = "ex_tail"
    pub = new_publisher(settings)
    pub.publish(started(ex))
    for i in range(2500):  # more than two pages of the history
        pub.publish(out(ex, f"line {i}\n", "stderr" if i % 7 == 0 else "stdout"))
    pub.publish(complete(ex))
    assert pub.flush(10.0)
    everything = "".join(f"line {i}\n" for i in range(2500))
    assert output_tail(rclient, keys, ex, 50) == everything[-50:]
    assert output_tail(rclient, keys, ex, 10**9) == everything
    assert output_tail(rclient, keys, "ex_none", 100) == ""


def test_output_idle_until_redis_confirms_every_event_of_the_execution(
    private_redis: PrivateRedis,
    key_prefix: str,
    new_publisher: Callable[..., Publisher],
) -> None:
    """The coalescer's "nothing in flight" (issue 19): false from publish() until Redis
    answered, per execution, and while Redis is down; true again once all went through."""
    ex, other = "ex_idle", "ex_idle_other"
    settings = Settings(redis_url=private_redis.url, key_prefix=key_prefix)
    pub = new_publisher(settings)
    assert pub.output_idle(ex)
    pub.publish(started(ex))
    pub.publish(started(other))
    assert pub.flush(10.0)
    assert pub.output_idle(ex) and pub.output_idle(other)

    private_redis.kill()
    pub.publish(out(ex, "while down\n"))
    assert not pub.output_idle(ex)
    assert pub.output_idle(other), "another execution's events are not this one's"
    wait_until(lambda: not pub.connected, 10.0, what="the publisher to notice Redis is gone")
    assert not pub.output_idle(ex)

    private_redis.start()
    wait_until(lambda: pub.output_idle(ex), 30.0, what="the buffered chunk to be confirmed")
    pub.publish(out(ex, "again\n"), wait=True)
    assert pub.output_idle(ex)
    pub.publish(out(ex, "then\n"))
    pub.forget(ex)
    assert pub.output_idle(ex)


def test_output_goes_to_the_all_channel_only_while_someone_subscribes(
    settings: Settings,
    keys: Keys,
    new_client: Callable[[str], redis.Redis],
    new_publisher: Callable[..., Publisher],
) -> None:
    """Nobody subscribed: output skips the all-executions channel (a pattern subscription,
    which Redis's NUMSUB does not count, sees what goes there) while control events still go;
    once someone subscribes, output goes there too within 2 x ALL_CHECK_S. Both the script path
    (small batches) and the direct path (big output) follow the rule."""
    client = new_client(settings.redis_url or "")
    watcher = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    watcher.psubscribe(keys.channel_all())
    seen: list[str] = []

    def drain_until(what: str, done: Callable[[], bool]) -> None:
        def step() -> bool:
            msg = watcher.get_message(timeout=0.05)
            if msg is not None and msg["type"] == "pmessage":
                seen.append(RawEvent.from_json(msg["data"]).event)
            return done()

        wait_until(step, 10.0, interval_s=0.0, what=what)

    listener = None
    try:
        pub = new_publisher(settings)
        pub.publish(started("ex_q"))
        pub.publish(out("ex_q", "small"))  # the script path
        assert pub.flush(10.0)
        pub.publish(out("ex_q", "y" * DIRECT_MIN_BYTES))  # the direct path
        assert pub.flush(10.0)
        pub.publish(started("ex_r"))
        assert pub.flush(10.0)
        drain_until("both control events", lambda: seen.count("execution_started") == 2)
        assert "execution_output" not in seen

        listener = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        listener.subscribe(keys.channel_all())
        deadline = time.monotonic() + ALL_CHECK_S + 5.0
        while "execution_output" not in seen and time.monotonic() < deadline:
            pub.publish(out("ex_q", "small again"))
            pub.publish(out("ex_q", "z" * DIRECT_MIN_BYTES))
            assert pub.flush(10.0)
            drain_until("the batch on the all channel", lambda: True)
        drain_until("output on the all channel", lambda: "execution_output" in seen)
    finally:
        watcher.close()
        if listener is not None:
            listener.close()
