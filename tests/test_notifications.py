"""Units of webhook notifications (CONTRACT §10): the signature, masked URLs, the attempt store,
the retry schedule, which webhooks want which end, a delivery round, and the checks of a
playbook's `notify` and of the settings. On fakeredis; tests/relay/test_notify.py runs the
real thing."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
from collections.abc import Iterator, Mapping

import fakeredis
import pytest

from events.errors import ConfigError
from events.keys import Keys
from events.lifecycle import Reporter
from events.models import utc_now
from events.notifications import (
    Attempt,
    AttemptStore,
    NotifyTarget,
    mask_url,
    notification_body,
    sign,
    targets,
)
from events.settings import Settings
from events.vocabulary import TERMINAL_STATUSES, CommandType, Status
from tests.helpers import queued_record
from worker import notify
from worker.notify import (
    MAX_BACKOFF_S,
    NOTIFY_WINDOW_S,
    POST_TIMEOUT_S,
    next_delay_s,
    notify_round,
    retry_delays_s,
)
from worker.playbook.errors import PlaybookError
from worker.playbook.loading import load_playbook
from worker.runtime import Runtime


def test_the_signature_is_the_hmac_sha256_of_the_body() -> None:
    body = b'{"executionId":"ex_1"}'
    expected = hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
    assert sign(body, "k3y") == f"sha256={expected}"
    assert sign(body, "other") != sign(body, "k3y")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example.com/x?token=abc&b=2", "https://hooks.example.com/x?***"),
        ("https://user:pw@hooks.example.com/x", "https://***@hooks.example.com/x"),
        ("http://127.0.0.1:9/x#frag", "http://127.0.0.1:9/x#***"),
        ("https://hooks.example.com/x", "https://hooks.example.com/x"),
    ],
)
def test_masked_urls_keep_no_token(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_attempts_are_kept_in_order_beside_the_record_and_expire() -> None:
    client = fakeredis.FakeRedis()
    keys = Keys("t")
    store = AttemptStore(client, keys, ttl_s=60)
    assert store.claim("ex_1") and not store.claim("ex_1") and store.claim("ex_2")
    first = Attempt(at=utc_now(), url="http://a/", attempt=1, status_code=500, delivered=False)
    second = Attempt(at=utc_now(), url="http://a/", attempt=2, status_code=204, delivered=True)
    store.add("ex_1", first)
    store.add("ex_1", second)
    assert store.attempts("ex_1") == [first, second]
    assert store.attempts("ex_2") == []
    assert 0 < client.ttl(keys.notifications("ex_1")) <= 60
    assert 0 < client.ttl(keys.notify_claim("ex_1")) <= 60
    assert first.wire() == {
        "at": first.at,
        "url": "http://a/",
        "attempt": 1,
        "statusCode": 500,
        "error": None,
        "delivered": False,
    }


@pytest.mark.parametrize("base_s", [0.2, 1.0, 5.0, 60.0, 500.0])
def test_retries_double_and_end_within_the_window(base_s: float) -> None:
    delays = retry_delays_s(base_s)
    assert delays and all(d <= MAX_BACKOFF_S for d in delays)
    assert all(b == min(a * 2, MAX_BACKOFF_S) for a, b in itertools.pairwise(delays))
    # Every attempt taking its whole timeout, the last still ends within the window.
    assert sum(delays) + POST_TIMEOUT_S * (len(delays) + 1) <= NOTIFY_WINDOW_S
    for retries, nominal in enumerate(delays):
        assert nominal / 2 <= (next_delay_s(base_s, retries, [0]) or 0) <= nominal
    assert next_delay_s(base_s, len(delays), [0]) is None
    assert next_delay_s(base_s, 0, []) is None


def test_targets_are_the_playbooks_then_every_executions() -> None:
    spec = {"notify": [{"webhook": "http://a/", "on": ["failed", "timeout"]}]}
    found = targets(spec, ("http://all/",))
    assert found == [
        NotifyTarget("http://a/", frozenset({Status.FAILED, Status.TIMEOUT})),
        NotifyTarget("http://all/", TERMINAL_STATUSES),
    ]
    assert [t.wants(Status.COMPLETED) for t in found] == [False, True]
    assert targets(None, ()) == []


class FakePoster:
    """Answers each POST with the next of `answers` (an int, or an exception to raise)."""

    def __init__(self, *answers: int | Exception) -> None:
        self.answers = list(answers)
        self.posts: list[tuple[str, bytes, dict[str, str]]] = []

    def __call__(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> int:
        self.posts.append((url, body, dict(headers)))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def rt() -> Iterator[Runtime]:
    settings = Settings(
        notify_webhooks=("http://all.example/hook?token=t0k",),
        webhook_secret="s3cret",
        public_url="https://ops.example.com",
    )
    runtime = Runtime.build(settings, fakeredis.FakeRedis())
    yield runtime
    runtime.close()
    notify.use_poster(notify._no_poster)


def ended(rt: Runtime, status: Status | None, spec: Mapping[str, object] | None = None) -> str:
    ex = "ex_" + status if status else "ex_running"
    queued_record(rt.records, ex, CommandType.PLAYBOOK, spec or {}, command="nightly")
    if status is not None:
        Reporter(rt.publisher, ex).complete(status, utc_now(), exit_code=3, error="boom", wait=True)
    return ex


def test_a_round_posts_signed_records_each_attempt_and_names_what_failed(rt: Runtime) -> None:
    spec = {"notify": [{"webhook": "http://mine.example/h", "on": ["failed"]}]}
    ex = ended(rt, Status.FAILED, spec)
    poster = FakePoster(200, ConnectionError("refused by http://all.example/hook?token=t0k"))
    notify.use_poster(poster)
    assert notify_round(rt, ex, None, 1) == [1]
    (url_a, body, headers), (url_b, _, _) = poster.posts
    assert (url_a, url_b) == ("http://mine.example/h", "http://all.example/hook?token=t0k")
    assert headers["X-Cloudops-Signature"] == sign(body, "s3cret")
    assert json.loads(body) == {
        "executionId": ex,
        "status": "failed",
        "playbookName": "nightly",
        "exitCode": 3,
        "durationMs": json.loads(body)["durationMs"],
        "error": "boom",
        "url": f"https://ops.example.com/#{ex}",
    }
    done = notify.attempt_store(rt).attempts(ex)
    assert [(a.url, a.delivered, a.status_code) for a in done] == [
        ("http://mine.example/h", True, 200),
        ("http://all.example/hook?***", False, None),
    ]
    assert done[1].error == "ConnectionError: refused by http://all.example/hook?***"
    # The retry round tries the failed one only.
    notify.use_poster(FakePoster(503))
    assert notify_round(rt, ex, [1], 2) == [1]
    assert notify.attempt_store(rt).attempts(ex)[-1].error == "HTTP 503"


def test_a_round_skips_webhooks_that_do_not_want_the_status(rt: Runtime) -> None:
    spec = {"notify": [{"webhook": "http://mine.example/h", "on": ["failed"]}]}
    ex = ended(rt, Status.COMPLETED, spec)
    poster = FakePoster(200)
    notify.use_poster(poster)
    assert notify_round(rt, ex, None, 1) == []
    assert [p[0] for p in poster.posts] == ["http://all.example/hook?token=t0k"]


def test_a_round_waits_for_the_record_to_say_ended(rt: Runtime) -> None:
    ex = ended(rt, None)
    poster = FakePoster()
    notify.use_poster(poster)
    assert notify_round(rt, ex, None, 1) is None
    assert notify_round(rt, "ex_unknown", None, 1) == []
    assert poster.posts == [] and notify.attempt_store(rt).attempts(ex) == []


def test_unsigned_without_a_secret() -> None:
    rt = Runtime.build(Settings(notify_webhooks=("http://a.example/",)), fakeredis.FakeRedis())
    try:
        ex = ended(rt, Status.TIMEOUT)
        poster = FakePoster(204)
        notify.use_poster(poster)
        assert notify_round(rt, ex, None, 1) == []
        assert "X-Cloudops-Signature" not in poster.posts[0][2]
        assert json.loads(poster.posts[0][1])["url"] is None
    finally:
        rt.close()
        notify.use_poster(notify._no_poster)


def test_the_body_of_a_command_has_no_playbook_name() -> None:
    raw = {"executionId": "ex_1", "command": "echo", "commandType": "script", "status": "failed"}
    assert json.loads(notification_body(raw, None))["playbookName"] is None


NOTIFY_YAML = """\
name: nightly
steps:
  - command: "true"
notify:
  - on: [failed, timeout]
    webhook: https://hooks.example.com/x?token=abc
  - webhook: http://all.example/
"""


def test_a_playbooks_notify_is_checked() -> None:
    pb = load_playbook(NOTIFY_YAML)
    assert [n.target() for n in pb.notify] == [
        NotifyTarget(
            "https://hooks.example.com/x?token=abc", frozenset({Status.FAILED, Status.TIMEOUT})
        ),
        NotifyTarget("http://all.example/", TERMINAL_STATUSES),
    ]


@pytest.mark.parametrize(
    ("entry", "field", "words"),
    [
        ("{on: [running], webhook: 'http://a/'}", "notify[0].on", "'running'"),
        ("{on: [], webhook: 'http://a/'}", "notify[0].on", "list of statuses"),
        ("{webhook: 'ftp://a/?token=abc'}", "notify[0].webhook", "'ftp://a/?***'"),
        ("{on: [failed]}", "notify[0].webhook", "missing"),
        ("{webhok: 'http://a/'}", "notify[0].webhok", "unknown key"),
    ],
)
def test_a_bad_notify_is_refused_naming_the_field(entry: str, field: str, words: str) -> None:
    text = f"name: n\nsteps:\n  - command: 'true'\nnotify:\n  - {entry}\n"
    with pytest.raises(PlaybookError) as e:
        load_playbook(text)
    assert f"field {field}:" in str(e.value) and words in str(e.value)
    assert "token=abc" not in str(e.value)


def test_bad_webhook_settings_are_named_without_their_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLOUDOPS_NOTIFY_WEBHOOKS", "http://ok.example/,ftp://x/?token=abc")
    with pytest.raises(ConfigError) as e:
        Settings.from_env()
    assert "CLOUDOPS_NOTIFY_WEBHOOKS" in str(e.value) and "token=abc" not in str(e.value)
    monkeypatch.setenv("CLOUDOPS_NOTIFY_WEBHOOKS", "http://ok.example/, https://b.example/?t=1")
    monkeypatch.setenv("CLOUDOPS_PUBLIC_URL", "ops.example.com")
    with pytest.raises(ConfigError, match="CLOUDOPS_PUBLIC_URL must be an http"):
        Settings.from_env()
    monkeypatch.setenv("CLOUDOPS_PUBLIC_URL", "https://ops.example.com")
    assert Settings.from_env().notify_webhooks == ("http://ok.example/", "https://b.example/?t=1")
