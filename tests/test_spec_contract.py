"""Our wire payloads against the TypeScript interfaces of the spec we build from.

The spec (`../shared/seed/execution-events.md`) declares one `interface XPayload` per event and
`ExecutionOptions`, and names each event in `listen<XPayload>('event_name', ...)`. For every
event, a payload produced by our models (as the publisher writes it) must carry exactly the
spec's camelCase keys, with the spec's JSON types: required keys always, optional (`?`) keys
when they have a value and never as null, and no other key except our documented extras
(fields declared with `events.models.extra`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from events import models as m
from events.models import (
    EVENT_TYPES,
    EXTRA_PREFIX,
    SPEC_EVENT_TYPES,
    Envelope,
    ExecutionOptions,
    WireModel,
)
from tests.helpers import encode_parts

SPEC = Path(__file__).resolve().parents[1].parent / "shared" / "seed" / "execution-events.md"


@dataclass(frozen=True)
class Member:
    name: str
    optional: bool
    ts_type: str


Interface = dict[str, Member]

_INTERFACE = re.compile(r"^interface\s+(\w+)\s*\{\n(.*?)^\}", re.MULTILINE | re.DOTALL)
_MEMBER = re.compile(r"^\s*(\w+)(\?)?\s*:\s*(.+?)\s*;?\s*(?://.*)?$")
_LISTEN = re.compile(r"listen<(\w+)>\(\s*'(\w+)'")


def _typescript_blocks(markdown: str) -> str:
    return "\n".join(re.findall(r"```typescript\n(.*?)```", markdown, re.DOTALL))


def parse_interfaces(markdown: str) -> dict[str, Interface]:
    out: dict[str, Interface] = {}
    for name, body in _INTERFACE.findall(_typescript_blocks(markdown)):
        members: Interface = {}
        for line in body.splitlines():
            if not line.strip() or line.strip().startswith("//"):
                continue
            m = _MEMBER.match(line)
            assert m, f"spec interface {name}: cannot parse member line {line!r}"
            members[m.group(1)] = Member(m.group(1), m.group(2) == "?", m.group(3))
        assert name not in out or out[name] == members, f"spec declares {name} twice, differently"
        out[name] = members
    return out


def parse_listeners(markdown: str) -> dict[str, str]:
    """event name -> payload interface name, from `listen<XPayload>('event_name', ...)`."""
    out: dict[str, str] = {}
    for iface, event in _LISTEN.findall(_typescript_blocks(markdown)):
        assert out.get(event, iface) == iface, f"spec listens to {event} with two types"
        out[event] = iface
    return out


@pytest.fixture(scope="module")
def spec_text() -> str:
    if not SPEC.is_file():
        pytest.fail(
            f"the seed spec is missing: expected {SPEC} (the shared/ folder next to the repo); "
            "the event contract cannot be checked without it"
        )
    return SPEC.read_text("utf-8")


@pytest.fixture(scope="module")
def interfaces(spec_text: str) -> dict[str, Interface]:
    found = parse_interfaces(spec_text)
    wanted = {"ExecutionOptions", *(f"{m.__name__}" for m in SPEC_EVENT_TYPES.values())}
    missing = wanted - found.keys()
    assert not missing, f"spec interfaces not found in {SPEC}: {sorted(missing)}"
    return found


@pytest.fixture(scope="module")
def listeners(spec_text: str) -> dict[str, str]:
    return parse_listeners(spec_text)


# -- the JSON type check ---------------------------------------------------------------------


def _alternatives(ts_type: str) -> list[str]:
    return [alt.strip() for alt in ts_type.split("|") if alt.strip()]


def type_errors(
    value: Any, ts_type: str, interfaces: dict[str, Interface], where: str
) -> list[str]:
    """Why `value` (decoded JSON) is not of TypeScript type `ts_type`; empty when it is."""
    alts = _alternatives(ts_type)
    literals = [a for a in alts if a[0] in "'\""]
    if literals:
        allowed = [a[1:-1] for a in literals]
        if len(literals) != len(alts):
            raise AssertionError(f"{where}: unsupported mixed union {ts_type!r} in the spec")
        return [] if value in allowed else [f"{where}: {value!r} is not one of {allowed}"]
    if len(alts) != 1:
        raise AssertionError(f"{where}: unsupported union {ts_type!r} in the spec")
    t = alts[0]
    if t == "string":
        ok = isinstance(value, str)
    elif t == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif t == "boolean":
        ok = isinstance(value, bool)
    elif t in interfaces:
        if not isinstance(value, dict):
            return [f"{where}: expected an object ({t}), got {value!r}"]
        return object_errors(value, interfaces[t], interfaces, where, extras=set())
    else:
        raise AssertionError(f"{where}: the test does not know TypeScript type {t!r}")
    return [] if ok else [f"{where}: expected {t}, got {type(value).__name__} {value!r}"]


def object_errors(
    obj: dict[str, Any],
    iface: Interface,
    interfaces: dict[str, Interface],
    where: str,
    *,
    extras: set[str],
) -> list[str]:
    errors = []
    for member in iface.values():
        if member.name not in obj:
            if not member.optional:
                errors.append(f"{where}: required key {member.name!r} is missing")
            continue
        if obj[member.name] is None:
            errors.append(f"{where}.{member.name}: null on the wire (leave it out instead)")
            continue
        errors += type_errors(
            obj[member.name], member.ts_type, interfaces, f"{where}.{member.name}"
        )
    unknown = obj.keys() - iface.keys() - extras
    if unknown:
        errors.append(f"{where}: keys neither in the spec nor documented extras: {sorted(unknown)}")
    return errors


def documented_extras(model: type[WireModel]) -> set[str]:
    """Wire names of the fields our models declare as extras (with `events.models.extra`)."""
    return {
        info.alias or name
        for name, info in model.model_fields.items()
        if (info.description or "").startswith(EXTRA_PREFIX)
    }


# -- the payloads we check -------------------------------------------------------------------

TS = "2026-03-04T05:06:07.000008Z"
EX = "ex_01HZY"


def full_payloads() -> list[WireModel]:
    """One payload per event with every field set, spec-optional ones and extras included."""
    return [
        m.ExecutionStartedPayload(
            execution_id=EX,
            command="aws ec2 describe-instances",
            command_type="aws_cli",
            started_at=TS,
            options=ExecutionOptions(
                working_dir="/tmp", timeout=300, aws_profile="ops", aws_region="eu-west-1"
            ),
            worker="host-a",
        ),
        m.ExecutionOutputPayload(
            execution_id=EX,
            output="Listing EC2 instances...\n",
            stream="stderr",
            timestamp=TS,
            step_id="list",
            host="web1@eu",
            truncated=True,
            dropped_bytes=42,
        ),
        m.ExecutionCompletePayload(
            execution_id=EX,
            status="failed",
            started_at=TS,
            completed_at=TS,
            duration_ms=1250,
            exit_code=3,
            error="exit code 3",
            worker="host-a",
        ),
        m.ExecutionCancelledPayload(
            execution_id=EX, cancelled_at=TS, reason="User requested", partial_output="a\nb\n"
        ),
        m.PlaybookStepStartPayload(
            execution_id=EX,
            step_id="step_1",
            step_number=1,
            total_steps=3,
            step_name="List EC2 Instances",
            command="aws ec2 describe-instances",
            attempt=2,
            worker="host-b",
            hosts=["web1@eu", "web2@eu"],
        ),
        m.PlaybookStepCompletePayload(
            execution_id=EX,
            step_id="step_1",
            step_number=1,
            step_name="List EC2 Instances",
            success=False,
            exit_code=1,
            duration_ms=1250,
            error="exit code 1",
            continue_on_error=True,
            attempts=2,
            worker="host-b",
            host_counts={"completed": 2, "failed": 1},
        ),
    ]


def minimal(payload: WireModel) -> WireModel:
    """The same payload with every optional field unset (and empty options)."""
    data = {
        n: getattr(payload, n) for n, f in type(payload).model_fields.items() if f.is_required()
    }
    if "options" in data:
        data["options"] = ExecutionOptions()
    return type(payload)(**data)


def as_published(payload: WireModel) -> dict[str, Any]:
    """The envelope exactly as the publisher writes it (head + id + tail)."""
    name = next(e for e, m in EVENT_TYPES.items() if type(payload) is m)
    head, tail = encode_parts(name, EX, payload)
    doc: dict[str, Any] = json.loads(head + b"7" + tail)
    return doc


# -- tests -----------------------------------------------------------------------------------


def test_spec_names_the_six_events_with_their_payloads(listeners: dict[str, str]) -> None:
    ours = {event: model.__name__ for event, model in SPEC_EVENT_TYPES.items()}
    assert listeners == ours


def test_the_samples_cover_every_event_and_every_field() -> None:
    samples = full_payloads()
    assert sorted(type(p).__name__ for p in samples) == sorted(
        m.__name__ for m in SPEC_EVENT_TYPES.values()
    )
    for p in samples:
        unset = [n for n in type(p).model_fields if getattr(p, n) is None]
        assert not unset, f"{type(p).__name__}: sample leaves {unset} unset"
    options = samples[0].options  # type: ignore[attr-defined]
    assert all(getattr(options, n) is not None for n in ExecutionOptions.model_fields)


@pytest.mark.parametrize("payload", full_payloads(), ids=lambda p: type(p).__name__)
def test_payload_has_exactly_the_spec_keys_and_types(
    payload: WireModel, interfaces: dict[str, Interface]
) -> None:
    model = type(payload)
    iface = interfaces[model.__name__]
    extras = documented_extras(model)
    assert not extras & iface.keys(), "a spec field must not be marked as our extra"

    for variant, p in (("full", payload), ("minimal", minimal(payload))):
        env = as_published(p)
        assert list(env) == ["event", "id", "executionId", "payload"]
        assert env["executionId"] == env["payload"]["executionId"]
        assert env == Envelope.model_validate(env).wire(), "publisher and Envelope.wire() differ"
        wire = env["payload"]
        where = f"{model.__name__}({variant})"
        errors = object_errors(wire, iface, interfaces, where, extras=extras)
        assert not errors, "\n".join(errors)
        optional = {m.name for m in iface.values() if m.optional} | extras
        if variant == "full":
            # Present when set: every spec key, optional ones included, and every extra.
            assert set(wire) == set(iface) | extras
            if "options" in wire:
                assert set(wire["options"]) == set(interfaces["ExecutionOptions"])
        else:
            # Left out when empty: only the spec's required keys remain.
            assert set(wire) == set(iface) - optional
            if "options" in wire:
                assert wire["options"] == {}


@pytest.mark.parametrize("model", list(SPEC_EVENT_TYPES.values()), ids=lambda m: m.__name__)
def test_model_requires_exactly_what_the_spec_requires(
    model: type[WireModel], interfaces: dict[str, Interface]
) -> None:
    iface = interfaces[model.__name__]
    required = {info.alias or n for n, info in model.model_fields.items() if info.is_required()}
    assert required == {m.name for m in iface.values() if not m.optional}
    declared = {info.alias or n for n, info in model.model_fields.items()}
    assert declared == set(iface) | documented_extras(model)


def test_execution_options_match_the_spec(interfaces: dict[str, Interface]) -> None:
    iface = interfaces["ExecutionOptions"]
    assert all(m.optional for m in iface.values())
    declared = {info.alias or n for n, info in ExecutionOptions.model_fields.items()}
    assert declared == set(iface)


def test_timestamps_are_rfc3339_utc() -> None:
    """CONTRACT §1: timestamps are RFC 3339 with a time zone, UTC."""
    for p in full_payloads():
        wire = as_published(p)["payload"]
        for key in ("startedAt", "completedAt", "cancelledAt", "timestamp"):
            if key in wire:
                parsed = datetime.fromisoformat(wire[key].replace("Z", "+00:00"))
                assert parsed.utcoffset() is not None
                assert parsed.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


# -- the parser itself -----------------------------------------------------------------------


def test_parser_reads_optional_members_literal_unions_and_nested_types() -> None:
    text = (
        "```typescript\ninterface APayload {\n  executionId: string;\n  status: 'a' | 'b';"
        "\n  exitCode?: number; // why\n  options: ExecutionOptions;\n}\n```\n"
        "```rust\ninterface Ignored {\n  x: string;\n}\n```\n"
    )
    parsed = parse_interfaces(text)
    assert list(parsed) == ["APayload"]
    a = parsed["APayload"]
    assert a["status"] == Member("status", False, "'a' | 'b'")
    assert a["exitCode"] == Member("exitCode", True, "number")
    assert a["options"].ts_type == "ExecutionOptions"


def test_checker_catches_wrong_missing_null_and_unknown_keys(
    interfaces: dict[str, Interface],
) -> None:
    iface = interfaces["ExecutionCompletePayload"]
    good = as_published(full_payloads()[2])["payload"]
    assert object_errors(good, iface, interfaces, "c", extras={"worker"}) == []
    cases: list[tuple[dict[str, Any], str]] = [
        ({**good, "durationMs": "12"}, "expected number"),
        ({**good, "status": "done"}, "is not one of"),
        ({k: v for k, v in good.items() if k != "startedAt"}, "required key 'startedAt'"),
        ({**good, "exitCode": None}, "null on the wire"),
        ({**good, "exit_code": 0}, "neither in the spec nor documented extras"),
        ({**good, "success": 1}, "neither in the spec nor documented extras"),
    ]
    for bad, message in cases:
        errors = object_errors(bad, iface, interfaces, "c", extras={"worker"})
        assert any(message in e for e in errors), (bad, errors)
    started = interfaces["ExecutionStartedPayload"]
    s = as_published(full_payloads()[0])["payload"]
    errors = object_errors(
        {**s, "options": {"timeout": "30"}}, started, interfaces, "s", extras={"worker"}
    )
    assert errors == ["s.options.timeout: expected number, got str '30'"]
