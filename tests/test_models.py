"""The event models: wire form, immutability, decode() and RawEvent."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from events import models, vocabulary
from events.errors import CloudOpsError, EventDecodeError
from events.models import (
    Envelope,
    ExecutionCompletePayload,
    ExecutionOptions,
    ExecutionOutputPayload,
    ExecutionStartedPayload,
    decode,
    utc_now,
)
from events.vocabulary import Status
from events.wire import RawEvent, payload_bytes
from tests.helpers import encode_parts

TS = "2026-03-04T05:06:07.000008Z"


def output(**changes: Any) -> ExecutionOutputPayload:
    fields: dict[str, Any] = {
        "execution_id": "ex_1",
        "output": "hello\n",
        "stream": "stdout",
        "timestamp": TS,
    }
    return ExecutionOutputPayload(**{**fields, **changes})


def complete(**changes: Any) -> ExecutionCompletePayload:
    fields: dict[str, Any] = {
        "execution_id": "ex_1",
        "status": "completed",
        "started_at": TS,
        "completed_at": TS,
        "duration_ms": 5,
    }
    return ExecutionCompletePayload(**{**fields, **changes})


def wire_of(payload: models.WireModel, id: int = 1) -> dict[str, Any]:
    head, tail = encode_parts(models.event_name(payload), "ex_1", payload)
    doc: dict[str, Any] = json.loads(head + b"%d" % id + tail)
    return doc


# -- wire form -------------------------------------------------------------------------------


def test_wire_is_camel_case_and_leaves_out_unset_optional_fields() -> None:
    p = complete()
    assert p.wire() == {
        "executionId": "ex_1",
        "status": "completed",
        "startedAt": TS,
        "completedAt": TS,
        "durationMs": 5,
    }
    assert "exitCode" not in p.model_dump_json(by_alias=True, exclude_none=True)
    assert complete(exit_code=0).wire()["exitCode"] == 0  # 0 is a value, not "unset"
    assert complete(error="").wire()["error"] == ""


def test_options_leave_out_unset_fields() -> None:
    p = ExecutionStartedPayload(
        execution_id="ex_1",
        command="ls",
        command_type="script",
        started_at=TS,
        options=ExecutionOptions(aws_region="eu-west-1"),
    )
    assert p.wire()["options"] == {"awsRegion": "eu-west-1"}
    assert wire_of(p)["payload"]["options"] == {"awsRegion": "eu-west-1"}


def test_python_names_and_wire_names_both_construct() -> None:
    by_alias = ExecutionOutputPayload.model_validate(
        {"executionId": "ex_1", "output": "x", "stream": "stderr", "timestamp": TS}
    )
    assert by_alias == output(output="x", stream="stderr")


def test_envelope_key_order_and_round_trip() -> None:
    p = output(output="héllo ✓ \U0001f600\n")
    head, tail = encode_parts("execution_output", "ex_1", p)
    text = head + b"17" + tail
    assert text.startswith(b'{"event":"execution_output","id":17,"executionId":"ex_1","payload":')
    env = decode(text)
    assert env.id == 17 and env.event == "execution_output" and env.payload == p
    assert json.dumps(env.wire(), separators=(",", ":"), ensure_ascii=False).encode() == text
    assert list(env.wire()) == ["event", "id", "executionId", "payload"]


def test_unknown_wire_fields_are_kept() -> None:
    doc = wire_of(output())
    doc["payload"]["futureField"] = {"a": 1}
    env = decode(doc)
    assert env.wire()["payload"]["futureField"] == {"a": 1}


def test_utc_now_is_rfc3339_utc() -> None:
    now = utc_now()
    assert now.endswith("Z")
    parsed = datetime.fromisoformat(now.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None and parsed.utcoffset() == UTC.utcoffset(None)


def test_terminal_statuses() -> None:
    assert {s for s in Status if s.terminal} == {
        Status.COMPLETED,
        Status.FAILED,
        Status.TIMEOUT,
        Status.CANCELLED,
    }
    assert {"completed", "failed", "timeout", "cancelled"} == vocabulary.TERMINAL_STATUSES


# -- immutability ----------------------------------------------------------------------------


def test_payloads_options_and_envelopes_are_frozen() -> None:
    p = output()
    with pytest.raises(ValidationError):
        p.output = "changed"  # type: ignore[misc]
    opts = ExecutionOptions(timeout=3)
    with pytest.raises(ValidationError):
        opts.timeout = 4  # type: ignore[misc]
    env = Envelope(event="execution_output", id=1, execution_id="ex_1", payload=p)
    with pytest.raises(ValidationError):
        env.id = 2  # type: ignore[misc]
    # A changed copy is a new object; the original stays as it was.
    assert p.model_copy(update={"dropped_bytes": 3}).dropped_bytes == 3
    assert p.dropped_bytes is None


def test_payloads_are_hashable_values() -> None:
    assert output() == output()
    assert hash(output()) == hash(output())


# -- decode() errors -------------------------------------------------------------------------


def _bad_cases() -> list[tuple[str, str | bytes | dict[str, Any]]]:
    good = wire_of(output())
    no_output = json.loads(json.dumps(good))
    del no_output["payload"]["output"]
    wrong_stream = json.loads(json.dumps(good))
    wrong_stream["payload"]["stream"] = "stdin"
    wrong_type = wire_of(complete())
    wrong_type["payload"]["durationMs"] = "fast"
    negative = wire_of(complete())
    negative["payload"]["durationMs"] = -1
    naive_time = json.loads(json.dumps(good))
    naive_time["payload"]["timestamp"] = "2026-03-04T05:06:07"
    not_time = json.loads(json.dumps(good))
    not_time["payload"]["timestamp"] = "yesterday"
    other_ex = json.loads(json.dumps(good))
    other_ex["executionId"] = "ex_2"
    return [
        ("bad JSON", '{"event": "execution_output", '),
        ("bad UTF-8", b'{"event": "\xff"}'),
        ("not an object", "[1, 2]"),
        ("JSON null", "null"),
        ("unknown event", {**good, "event": "execution_exploded"}),
        ("event not a string", {**good, "event": 3}),
        ("no event", {k: v for k, v in good.items() if k != "event"}),
        ("no id", {k: v for k, v in good.items() if k != "id"}),
        ("id zero", {**good, "id": 0}),
        ("id not a number", {**good, "id": "seven"}),
        ("no payload", {k: v for k, v in good.items() if k != "payload"}),
        ("payload not an object", {**good, "payload": "text"}),
        ("missing field", no_output),
        ("wrong literal", wrong_stream),
        ("wrong type", wrong_type),
        ("negative duration", negative),
        ("timestamp without zone", naive_time),
        ("not a timestamp", not_time),
        ("mismatched executionId", other_ex),
        ("no executionId", {k: v for k, v in good.items() if k != "executionId"}),
    ]


@pytest.mark.parametrize(("case", "data"), _bad_cases(), ids=[c for c, _ in _bad_cases()])
def test_decode_raises_one_named_error(case: str, data: str | bytes | dict[str, Any]) -> None:
    with pytest.raises(EventDecodeError):
        decode(data)
    if isinstance(data, dict):
        with pytest.raises(EventDecodeError):
            decode(json.dumps(data))


def test_decode_error_is_a_cloudops_error_and_chains_the_cause() -> None:
    with pytest.raises(EventDecodeError) as info:
        decode("{nope")
    assert isinstance(info.value, CloudOpsError)
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(EventDecodeError, match="executionId"):
        decode({**wire_of(output()), "executionId": "ex_other"})
    with pytest.raises(EventDecodeError, match="unknown event"):
        decode({**wire_of(output()), "event": "nope"})


def test_decode_accepts_str_bytes_and_dict() -> None:
    doc = wire_of(output())
    text = json.dumps(doc)
    assert decode(doc) == decode(text) == decode(text.encode())


def test_payload_must_match_the_event_name() -> None:
    """An output payload under `execution_complete` is rejected, not coerced."""
    with pytest.raises(EventDecodeError):
        decode({**wire_of(output()), "event": "execution_complete"})


# -- RawEvent --------------------------------------------------------------------------------


def test_raw_event_fast_path_reads_the_head_without_parsing_the_payload() -> None:
    # The payload is garbage: only the head is read, so this cannot have gone through decode().
    text = '{"event":"execution_output","id":123,"executionId":"ex_1","payload":{BROKEN'
    ev = RawEvent.from_json(text)
    assert (ev.id, ev.event, ev.data) == (123, "execution_output", text.encode())
    assert not ev.terminal
    with pytest.raises(EventDecodeError):
        ev.decode()


def test_raw_event_from_bytes_and_terminal() -> None:
    head, tail = encode_parts("execution_complete", "ex_1", complete())
    ev = RawEvent.from_json(head + b"9" + tail)
    assert (ev.id, ev.event, ev.terminal) == (9, "execution_complete", True)
    assert ev.decode().payload == complete()
    assert repr(ev) == "RawEvent(id=9, event='execution_complete')"


@pytest.mark.parametrize(
    "doc",
    [
        # Other key orders and spacing, as other producers may write them: parsed fully.
        lambda w: json.dumps({"id": w["id"], **w}),
        lambda w: json.dumps(w, indent=2),
        lambda w: json.dumps(w, separators=(", ", ": ")),
    ],
    ids=["id-first", "indented", "spaced"],
)
def test_raw_event_falls_back_to_a_full_decode(doc: Any) -> None:
    w = wire_of(output(), id=41)
    ev = RawEvent.from_json(doc(w))
    assert (ev.id, ev.event) == (41, "execution_output")


@pytest.mark.parametrize(
    "text",
    [
        '{"event":"execution_output","id":x1,"executionId":"ex_1","payload":{}}',
        '{"event":"execution_output","id":5}',
        '{"event":"execution_output"}',
        '{"event":"nope","id":"a","payload":{}}',
        "",
    ],
)
def test_raw_event_fallback_rejects_bad_envelopes(text: str) -> None:
    with pytest.raises(EventDecodeError):
        RawEvent.from_json(text)


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(),
    seq=st.integers(min_value=1, max_value=2**53),
    ex=st.text(min_size=1, max_size=30),
    stream=st.sampled_from(["stdout", "stderr"]),
)
def test_any_output_round_trips(text: str, seq: int, ex: str, stream: str) -> None:
    p = ExecutionOutputPayload(execution_id=ex, output=text, stream=stream, timestamp=TS)
    head, tail = encode_parts("execution_output", ex, p)
    raw = RawEvent.from_json(head + str(seq).encode() + tail)
    assert (raw.id, raw.event) == (seq, "execution_output")
    env = raw.decode()
    assert env.payload == p and env.execution_id == ex and env.id == seq


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(),
    ex=st.text(min_size=1, max_size=30),
    step=st.none() | st.text(max_size=10),
    truncated=st.none() | st.booleans(),
    dropped=st.none() | st.integers(min_value=0, max_value=2**53),
)
def test_output_payload_json_is_pydantics_text(
    text: str, ex: str, step: str | None, truncated: bool | None, dropped: int | None
) -> None:
    """The orjson fast path writes exactly what pydantic would (any text, surrogates included:
    those fall back to pydantic)."""
    p = ExecutionOutputPayload(
        execution_id=ex,
        output=text,
        stream="stderr",
        timestamp=TS,
        step_id=step,
        truncated=truncated,
        dropped_bytes=dropped,
    )
    try:
        expected = p.model_dump_json(by_alias=True, exclude_none=True)
    except ValueError:
        return  # a lone surrogate: neither encoder writes it
    assert payload_bytes(p) == expected.encode()
