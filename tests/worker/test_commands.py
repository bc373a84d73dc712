"""Commands on real `cloudops worker` processes: events, statuses, output fidelity."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from events.models import ExecutionOptions, decode
from tests.conftest import StartWorker
from tests.helpers import CeleryDispatcher, output_of, payloads
from tests.worker.conftest import Collect

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _worker(start_worker: StartWorker) -> None:
    start_worker(concurrency=2)


@pytest.mark.brokers
def test_stdout_and_stderr_give_the_exact_event_sequence(
    dispatcher: CeleryDispatcher, collect: Collect
) -> None:
    ex = dispatcher.submit_command(
        "echo one; sleep 0.1; echo two >&2; sleep 0.1; echo three", "script"
    )
    events = collect(ex)
    names = [e.event for e in events]
    assert names == [
        "execution_started",
        "execution_output",
        "execution_output",
        "execution_output",
        "execution_complete",
    ]
    assert [e.id for e in events] == [1, 2, 3, 4, 5]
    outs = payloads(events, "execution_output")
    assert [(p["stream"], p["output"]) for p in outs] == [
        ("stdout", "one\n"),
        ("stderr", "two\n"),
        ("stdout", "three\n"),
    ]
    for e in events:
        decode(e.data)  # every envelope is valid against the models
    started = payloads(events, "execution_started")[0]
    assert started["commandType"] == "script" and started["options"] == {}
    done = payloads(events, "execution_complete")[0]
    assert done["status"] == "completed" and done["exitCode"] == 0
    assert "error" not in done
    rec = dispatcher.rt.records.get(ex)
    assert rec is not None and rec.status == "completed" and rec.exit_code == 0
    assert rec.worker == "w1@test" and rec.started_at and rec.completed_at


def test_nonzero_exit_is_failed_with_its_code(
    dispatcher: CeleryDispatcher, collect: Collect
) -> None:
    done = payloads(collect(dispatcher.submit_command("exit 3", "script")))[-1]
    assert done["status"] == "failed" and done["exitCode"] == 3
    assert done["error"] == "exit code 3"


def test_missing_command_fails_with_a_clear_error(
    dispatcher: CeleryDispatcher, collect: Collect
) -> None:
    events = collect(dispatcher.submit_command("no_such_command_xyz --flag", "script"))
    done = payloads(events)[-1]
    assert done["status"] == "failed" and done["exitCode"] == 127
    assert "command not found" in done["error"]
    assert "no_such_command_xyz" in output_of(events, "stderr")


def test_bad_working_directory_fails_before_start(
    dispatcher: CeleryDispatcher, collect: Collect
) -> None:
    opts = ExecutionOptions(working_dir="/nonexistent/dir")
    events = collect(dispatcher.submit_command("pwd", "script", options=opts))
    assert [e.event for e in events] == ["execution_started", "execution_complete"]
    done = payloads(events)[-1]
    assert done["status"] == "failed" and "exitCode" not in done
    assert done["error"] == "working directory does not exist: /nonexistent/dir"


def test_working_dir_and_options_reach_the_command(
    dispatcher: CeleryDispatcher, collect: Collect, tmp_path: Path
) -> None:
    opts = ExecutionOptions(working_dir=str(tmp_path), aws_profile="ops", aws_region="eu-west-3")
    events = collect(
        dispatcher.submit_command(
            'pwd; echo "$AWS_PROFILE $AWS_REGION $AWS_DEFAULT_REGION"', "script", options=opts
        )
    )
    assert output_of(events) == f"{tmp_path}\nops eu-west-3 eu-west-3\n"
    started = payloads(events, "execution_started")[0]
    assert started["options"] == {
        "workingDir": str(tmp_path),
        "awsProfile": "ops",
        "awsRegion": "eu-west-3",
    }


def test_random_bytes_arrive_as_valid_utf8(
    dispatcher: CeleryDispatcher, collect: Collect, tmp_path: Path
) -> None:
    with open("/dev/urandom", "rb") as f:
        data = f.read(1_000_000)
    blob = tmp_path / "random.bin"
    blob.write_bytes(data)
    events = collect(dispatcher.submit_command(f"cat {blob}", "script"))
    for e in events:
        json.loads(e.data)  # valid JSON, hence valid UTF-8 text
    assert output_of(events) == data.decode("utf-8", errors="replace")


def test_long_line_without_newline_is_chunked_at_64k(
    dispatcher: CeleryDispatcher, collect: Collect
) -> None:
    events = collect(dispatcher.submit_command("head -c 10000000 /dev/zero | tr '\\0' a", "script"))
    chunks = [p["output"] for p in payloads(events, "execution_output")]
    assert max(len(c.encode()) for c in chunks) <= 64 * 1024
    assert "".join(chunks) == "a" * 10_000_000


def test_five_million_lines_arrive_complete_and_byte_exact(
    dispatcher: CeleryDispatcher, collect: Collect
) -> None:
    expected = subprocess.run(["seq", "5000000"], capture_output=True, check=True).stdout.decode()
    events = collect(dispatcher.submit_command("seq 5000000", "script"), timeout_s=120)
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert output_of(events) == expected
    assert payloads(events)[-1]["status"] == "completed"


def test_secrets_are_masked_even_when_split_across_reads(
    start_worker: StartWorker, dispatcher: CeleryDispatcher, collect: Collect
) -> None:
    # A worker whose environment holds the secrets, as an ops host's would.
    start_worker(
        hostname="secrets@test",
        queues="secrets",
        env={
            "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY",
            "CLOUDOPS_SECRET_ENV": "DB_PASSWORD",
            "DB_PASSWORD": "hunter2-very-secret",
        },
    )
    dispatcher.settings = dispatcher.settings.with_(default_queue="secrets")
    ex = dispatcher.submit_command(
        'echo "key=$AWS_SECRET_ACCESS_KEY"; printf "pw=%s" "${DB_PASSWORD:0:7}"; sleep 0.2; '
        'printf "%s\\n" "${DB_PASSWORD:7}"; echo "$DB_PASSWORD" >&2',
        "script",
    )
    events = collect(ex)
    text = "".join(e.data.decode() for e in events)
    assert "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY" not in text
    assert "hunter2" not in text and "very-secret" not in text
    assert output_of(events, "stdout") == "key=***\npw=***\n"
    assert output_of(events, "stderr") == "***\n"


def test_secrets_are_masked_in_the_record_every_field_and_across_streams(
    start_worker: StartWorker, dispatcher: CeleryDispatcher, collect: Collect
) -> None:
    """Issue 20 finding 8: a secret typed into a command line stayed in clear in the record's
    `command` (and spec), and a value split between stdout and stderr was not masked."""
    secret = "abc123secretXYZ"
    start_worker(hostname="secrets2@test", queues="secrets2", env={"AWS_SECRET_ACCESS_KEY": secret})
    dispatcher.settings = dispatcher.settings.with_(default_queue="secrets2")
    rt = dispatcher.rt
    typed = dispatcher.submit_command(
        f"echo {secret}; printf abc123; sleep 0.3; printf 'secretXYZ\\n' >&2", "script"
    )
    bad_dir = dispatcher.submit_command(
        "true", "script", options=ExecutionOptions(working_dir=f"/nonexistent/{secret}")
    )
    for ex in (typed, bad_dir):
        events = collect(ex)
        text = "".join(e.data.decode() for e in events)
        assert secret not in text and "***" in text, ex
        record = rt.records.raw(ex)
        assert all(secret not in v for v in record.values()), record
        assert "***" in record["command"] or "***" in record["options"]
    events = collect(typed)
    assert (
        payloads(events)[0]["command"]
        == "echo ***; printf abc123; sleep 0.3; printf 'secretXYZ\\n' >&2"
    )
    # The split value: begun on stdout, finished on stderr, masked where it began.
    assert output_of(events, "stdout") == "***\n***"
    assert output_of(events, "stderr") == "\n"
    failed = payloads(collect(bad_dir))
    assert failed[0]["options"]["workingDir"] == "/nonexistent/***"
    assert failed[-1]["status"] == "failed" and "***" in failed[-1]["error"]
