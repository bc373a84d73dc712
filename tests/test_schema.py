"""The committed JSON Schemas and TypeScript declarations match the models they come from."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from events import schema
from events.models import (
    EVENT_TYPES,
    Envelope,
    ExecutionCompletePayload,
    ExecutionOptions,
    ExecutionOutputPayload,
    ExecutionStartedPayload,
)

REPO = Path(__file__).resolve().parents[1]


def test_committed_files_are_fresh() -> None:
    bad = schema.stale()
    assert not bad, f"stale files in events/schema/: {bad}; run `python -m events.schema`"


def test_one_schema_per_event_and_the_typescript_file() -> None:
    names = {p.name for p in schema.SCHEMA_DIR.iterdir()}
    assert names == {f"{e}.json" for e in EVENT_TYPES} | {"events.d.ts"}


def test_check_exits_1_on_a_stale_file(tmp_path: Path) -> None:
    assert schema.main(["--dir", str(tmp_path)]) == 0
    assert schema.stale(tmp_path) == []
    target = tmp_path / "execution_output.json"
    target.write_text(target.read_text().replace('"output"', '"outputText"'))
    (tmp_path / "execution_renamed.json").write_text("{}\n")
    assert sorted(schema.stale(tmp_path)) == ["execution_output.json", "execution_renamed.json"]
    assert schema.main(["--check", "--dir", str(tmp_path)]) == 1
    # Regenerating repairs the edit and removes the file of an event that does not exist.
    schema.write(tmp_path)
    assert schema.stale(tmp_path) == []
    assert not (tmp_path / "execution_renamed.json").exists()


def test_missing_file_is_stale(tmp_path: Path) -> None:
    schema.write(tmp_path)
    (tmp_path / "events.d.ts").unlink()
    assert schema.stale(tmp_path) == ["events.d.ts"]


def test_runs_as_a_module(tmp_path: Path) -> None:
    """`python -m events.schema --check` is what CI and humans run."""
    proc = subprocess.run(
        [sys.executable, "-m", "events.schema", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    stale_dir = tmp_path / "schema"
    stale_dir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "events.schema", "--check", "--dir", str(stale_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "execution_output.json" in proc.stderr


def test_schema_describes_the_wire_form() -> None:
    out = json.loads((schema.SCHEMA_DIR / "execution_output.json").read_text())
    assert out["properties"]["event"] == {"const": "execution_output", "type": "string"}
    assert set(out["required"]) == {"event", "id", "executionId", "payload"}
    payload = out["$defs"]["ExecutionOutputPayload"]
    assert set(payload["required"]) == {"executionId", "output", "stream", "timestamp"}
    assert payload["properties"]["stream"]["enum"] == ["stdout", "stderr"]
    assert payload["properties"]["timestamp"]["format"] == "date-time"
    # Optional fields are absent on the wire, never null.
    assert payload["properties"]["droppedBytes"] == {
        "description": payload["properties"]["droppedBytes"]["description"],
        "type": "integer",
    }
    assert "null" not in json.dumps(out)


def test_typescript_declares_every_payload() -> None:
    ts = (schema.SCHEMA_DIR / "events.d.ts").read_text()
    for model in EVENT_TYPES.values():
        assert f"export interface {model.__name__} {{" in ts
    assert "export interface ExecutionOptions {" in ts
    assert "  commandType: 'aws_cli' | 'script' | 'playbook';" in ts
    assert "  status: 'completed' | 'failed' | 'timeout' | 'cancelled';" in ts
    assert "  stream: 'stdout' | 'stderr';" in ts
    assert "  exitCode?: number;" in ts
    assert "  workingDir?: string;" in ts
    assert "  options: ExecutionOptions;" in ts
    assert "export interface EventEnvelope<" in ts


def _envelopes() -> list[dict[str, object]]:
    ts = "2026-01-02T03:04:05.000006Z"
    payloads = [
        ExecutionStartedPayload(
            execution_id="ex_1",
            command="aws s3 ls",
            command_type="aws_cli",
            started_at=ts,
            options=ExecutionOptions(timeout=30, aws_region="eu-west-1"),
        ),
        ExecutionOutputPayload(
            execution_id="ex_1", output="héllo\n", stream="stderr", timestamp=ts, dropped_bytes=3
        ),
        ExecutionCompletePayload(
            execution_id="ex_1",
            status="completed",
            started_at=ts,
            completed_at=ts,
            duration_ms=12,
            exit_code=0,
        ),
    ]
    out = []
    for n, p in enumerate(payloads, start=1):
        name = next(e for e, m in EVENT_TYPES.items() if isinstance(p, m))
        out.append(Envelope(event=name, id=n, execution_id="ex_1", payload=p).wire())
    return out


def test_wire_envelopes_validate_against_their_schema() -> None:
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    for env in _envelopes():
        doc = json.loads((schema.SCHEMA_DIR / f"{env['event']}.json").read_text())
        validator = jsonschema_rs.validator_for(doc)
        errors = [str(e) for e in validator.iter_errors(env)]
        assert not errors, (env["event"], errors)
        # And the schema rejects what decode() rejects: a wrong literal, a missing field.
        bad = json.loads(json.dumps(env))
        bad["payload"].pop("executionId")
        assert not validator.is_valid(bad)
        other = json.loads(json.dumps(env))
        other["event"] = "execution_unknown"
        assert not validator.is_valid(other)
