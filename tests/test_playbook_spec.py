"""Playbook loading, validation and param rendering (issue 4, points 1 and 2). Pure units."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.errors import InvalidRequestError
from events.models import MAX_TIMEOUT_S
from worker.playbook.command import plan_command
from worker.playbook.errors import PlaybookError
from worker.playbook.loading import load_playbook
from worker.playbook.params import parse_param_args, resolve_params
from worker.playbook.render import RenderedStep, render_options, render_playbook, render_step
from worker.playbook.shell import quote_for
from worker.playbook.shell_scanner import ShellContext
from worker.playbook.spec import Playbook
from worker.playbook.templates import TemplateError

EXAMPLES = Path(__file__).resolve().parent.parent / "deploy" / "examples"

# Values a caller could send to get a command run; each must stay one literal value.
NASTY = [
    "; rm -rf /",
    "$(touch pwned)",
    "`touch pwned`",
    "a'b",
    'a"b',
    'it\'s "quoted"',
    "line1\nline2; touch pwned",
    "two words",
    "  padded  ",
    "",
    "\\",
    "trailing\\",
    "$HOME ${HOME} $((1+1))",
    "* ? [a] ~ {a,b}",
    "'; touch pwned; echo '",
    '"; touch pwned; echo "',
    "$'\\x27'",
    "| touch pwned &",
    "> pwned",
    "!! !$",
    "ünïcødé ✓",
    "\ttab\r\n",
    "# not a comment",
    "EOF",
]


def _steps_yaml(body: str) -> str:
    return "name: test\nsteps:\n" + body


def _top(lines: str) -> str:
    """A playbook named x with these top-level lines and one echo step."""
    return "name: x\n" + lines + "steps:\n  - command: echo\n"


def _cmd(command: str) -> str:
    """A one-step playbook whose step `a` runs `command`."""
    return _steps_yaml(f"  - id: a\n    command: {command}\n")


def _with(line: str) -> str:
    """A one-step playbook whose step `a` runs echo and has one more line, `key: value`."""
    return _steps_yaml(f"  - id: a\n    command: echo\n    {line}\n")


# --- bad playbooks -------------------------------------------------------------------------------

# (case id, YAML text, substrings the message must contain), a case a line where it fits. The
# source name (bad.yml) is checked for every case; the step appears as "step N (id)" and the
# field as "field X".
BAD: list[tuple[str, str, list[str]]] = [
    ("yaml-syntax", "name: x\nsteps:\n  - command: echo hi\n    timeout: [1, 2\n",
     ["YAML syntax error", "line 5"]),
    ("yaml-tab-indent", "name: x\nsteps:\n\t- command: echo\n", ["YAML syntax error", "line 3"]),
    ("unquoted-template", "name: x\nsteps:\n  - command: {{ params.x }}\n",
     ["line 3", "must be quoted in YAML"]),
    ("two-documents", "name: x\n---\nname: y\n", ["YAML syntax error", "single document"]),
    ("empty-file", "", ["is empty"]),
    ("only-a-comment", "# nothing here\n", ["is empty"]),
    ("top-level-list", "- command: echo\n", ["line 1", "must be a mapping", "got a list"]),
    ("top-level-scalar", "just some text\n", ["must be a mapping", "got the string"]),
    ("unknown-top-key", "name: x\nstep:\n  - command: echo\n",
     ["line 2", "field step", "unknown key 'step'", "did you mean 'steps'"]),
    ("empty-name", "name: ''\nsteps:\n  - command: echo\n", ["field name", "must not be empty"]),
    ("missing-steps", "name: x\n", ["field steps", "is missing"]),
    ("empty-steps", "name: x\nsteps: []\n", ["line 2", "field steps", "at least one step"]),
    ("null-steps", "name: x\nsteps:\n", ["field steps", "must be a list"]),
    ("steps-is-a-mapping", "name: x\nsteps:\n  command: echo\n",
     ["line 3", "field steps", "must be a list"]),
    ("step-is-a-string", _steps_yaml("  - command: echo\n  - echo hi\n"),
     ["line 4", "step 2 (step_2)", "must be a mapping"]),
    ("unknown-step-key", _steps_yaml("  - command: echo\n    continue_on_eror: true\n"),
     ["line 4", "step 1 (step_1)", "field continue_on_eror", "unknown key",
      "did you mean 'continue_on_error'"]),
    ("missing-command", _steps_yaml("  - command: echo\n  - id: second\n    name: Second\n"),
     ["line 4", "step 2 (second)", "field command", "is missing"]),
    ("misspelt-command", _steps_yaml("  - id: a\n    comand: echo\n"),
     ["line 4", "step 1 (a)", "field comand", "did you mean 'command'", "1 more problem"]),
    ("empty-command", _cmd("''"), ["line 4", "step 1 (a)", "field command", "must not be empty"]),
    ("blank-command", _cmd("'   '"),
     ["line 4", "step 1 (a)", "field command", "must not be empty"]),
    ("null-command", _steps_yaml("  - id: a\n    command:\n"),
     ["step 1 (a)", "field command", "must be a string", "null"]),
    ("list-command", _cmd("[echo, hi]"),
     ["line 4", "step 1 (a)", "field command", "must be a string, got a list"]),
    ("mapping-command", _cmd("{echo: hi}"),
     ["line 4", "field command", "got a mapping", "must be quoted in YAML"]),
    ("number-name", _steps_yaml("  - id: a\n    name: 1.5\n    command: echo\n"),
     ["line 4", "step 1 (a)", "field name", "the number 1.5 (quote it"]),
    ("duplicate-ids", _steps_yaml("  - id: a\n    command: echo\n  - id: a\n    command: echo\n"),
     ["line 5", "step 2 (a)", "field id", "duplicate step id 'a'", "also step 1"]),
    ("duplicate-with-default-id",
     _steps_yaml("  - command: echo\n  - id: step_1\n    command: echo\n"),
     ["line 4", "step 2 (step_1)", "field id", "duplicate step id 'step_1'"]),
    ("bad-step-id", _steps_yaml("  - id: has space\n    command: echo\n"),
     ["line 3", "step 1 (has space)", "field id", "letters, digits"]),
    ("duplicate-key", _steps_yaml("  - id: a\n    command: echo a\n    command: echo b\n"),
     ["line 5", "step 1 (a)", "field command", "appears twice", "lines 4 and 5"]),
    ("zero-timeout", _with("timeout: 0"),
     ["line 5", "step 1 (a)", "field timeout", "whole number of seconds", "the integer 0"]),
    ("negative-timeout", _with("timeout: -5"),
     ["line 5", "step 1 (a)", "field timeout", "the integer -5"]),
    ("fractional-timeout", _with("timeout: 1.5"),
     ["line 5", "step 1 (a)", "field timeout", "the number 1.5"]),
    ("string-timeout", _with("timeout: '60'"), ["line 5", "field timeout", "the string '60'"]),
    ("boolean-timeout", _with("timeout: yes"), ["line 5", "field timeout", "the boolean true"]),
    ("timeout-over-7-days", _with(f"timeout: {MAX_TIMEOUT_S + 1}"),
     ["line 5", "field timeout", f"from 1 to {MAX_TIMEOUT_S}"]),
    ("options-timeout", _top("options:\n  timeout: -1\n"),
     ["line 3", "field options.timeout", "the integer -1"]),
    ("unknown-option", _top("options: {region: eu-west-1}\n"),
     ["line 2", "field options.region", "did you mean 'aws_region'"]),
    ("negative-retries", _with("retries: -1"),
     ["line 5", "step 1 (a)", "field retries", "from 0 to 10"]),
    ("too-many-retries", _with("retries: 11"), ["line 5", "field retries", "the integer 11"]),
    ("continue-on-error-not-boolean", _with("continue_on_error: maybe"),
     ["line 5", "field continue_on_error", "true or false", "'maybe'"]),
    ("max-concurrent-zero", _top("max_concurrent: 0\n"),
     ["line 2", "field max_concurrent", "at least 1"]),
    ("bad-env-name", _with("env: {BAD-NAME: x}"),
     ["line 5", "step 1 (a)", "field env.BAD-NAME", "environment variable name"]),
    ("env-not-a-mapping", _with("env: [A=1]"), ["line 5", "field env", "must be a mapping"]),
    ("bad-queue", _with("queue: host a"), ["line 5", "step 1 (a)", "field queue", "queue name"]),
    ("targets-none", _with("targets: {}"),
     ["line 5", "step 1 (a)", "field targets", "exactly one of queue, hosts or labels"]),
    ("targets-two", _with("targets: {hosts: [a@x], labels: {region: eu}}"),
     ["line 5", "field targets", "got hosts and labels"]),
    ("targets-unknown-key", _with("targets: {host: [a@x]}"),
     ["line 5", "field targets.host", "unknown key 'host'"]),
    ("targets-not-a-mapping", _with("targets: web"), ["line 5", "field targets", "mapping"]),
    ("targets-no-hosts", _with("targets: {hosts: []}"),
     ["line 5", "field targets.hosts", "at least one host"]),
    ("targets-bad-host", _with("targets: {hosts: ['web 1']}"),
     ["line 5", "field targets.hosts[0]", "worker hostname"]),
    ("targets-bad-queue", _with("targets: {queue: 'a b'}"),
     ["line 5", "field targets.queue", "queue name"]),
    ("targets-no-labels", _with("targets: {labels: {}}"),
     ["line 5", "field targets.labels", "at least one label"]),
    ("parallel-zero", _with("parallel: 0"), ["line 5", "field parallel", "at least 1"]),
    ("parallel-not-a-number", _with("parallel: all"), ["line 5", "field parallel", "'all'"]),
    ("max-failures-negative", _with("max_failures: -1"),
     ["line 5", "field max_failures", "at least 0"]),
    ("bad-region", _with("aws_region: eu west 1"), ["line 5", "field aws_region", "one word"]),
    ("bad-param-name", _top("params: {my-bucket: logs}\n"),
     ["line 2", "field params.my-bucket", "not a valid param name"]),
    ("null-param-default", _top("params:\n  bucket:\n"),
     ["line 3", "field params.bucket", "string, number or boolean"]),
    ("unknown-param", _steps_yaml("  - id: greet\n    command: echo {{ params.who }}\n"),
     ["line 4", "step 1 (greet)", "field command", "{{ params.who }} has no value"]),
    ("unknown-param-in-env", _with("env: {WHO: '{{ params.who }}'}"),
     ["line 5", "step 1 (a)", "field env.WHO", "{{ params.who }} has no value"]),
    ("malformed-param", _cmd("echo {{ params.}}"),
     ["line 4", "step 1 (a)", "field command", "malformed template '{{ params.}}'"]),
    ("not-a-param", _cmd("echo {{ foo }}"),
     ["line 4", "field command", "only {{ params.NAME }} is supported"]),
    ("unclosed-template", _cmd("echo {{ params.x"), ["line 4", "field command", "never closed"]),
    ("param-in-backticks",
     "name: x\nparams: {x: 1}\nsteps:\n  - id: a\n    command: echo `echo {{ params.x }}`\n",
     ["line 5", "step 1 (a)", "field command", "inside backticks"]),
    ("param-in-arithmetic",
     "name: x\nparams: {n: 1}\nsteps:\n  - id: a\n    command: echo $(( {{ params.n }} + 1 ))\n",
     ["line 5", "field command", "arithmetic"]),
    ("param-in-heredoc",
     "name: x\nparams: {x: 1}\nsteps:\n  - id: a\n    command: |\n      cat <<EOF\n"
     "      {{ params.x }}\n      EOF\n",
     ["line 5", "field command", "here-document"]),
    ("unterminated-quote", _cmd("echo 'oops"), ["line 4", "field command", "never closed"]),
    ("aws-unbalanced-quote", _cmd("aws s3 ls \"oops"),
     ["line 4", "field command", "No closing quotation"]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_playbook_is_refused_naming_source_step_field_and_line(
    text: str, expected: list[str]
) -> None:
    with pytest.raises(PlaybookError) as info:
        load_playbook(text, source_name="bad.yml")
    message = str(info.value)
    assert "bad.yml" in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert "\n" not in message  # one clear line for the CLI


def test_there_are_at_least_twenty_distinct_bad_playbooks() -> None:
    assert len({c[1] for c in BAD}) >= 20


def test_playbook_error_is_an_invalid_request_with_data() -> None:
    text = _with("timeout: -5")
    with pytest.raises(InvalidRequestError) as info:
        load_playbook(text, source_name="deploy.yml")
    err = info.value
    assert isinstance(err, PlaybookError)
    assert err.field == "playbook"
    assert (err.source, err.line, err.step_number, err.step_id, err.key) == (
        "deploy.yml",
        5,
        1,
        "a",
        "timeout",
    )
    assert str(err).startswith("playbook: deploy.yml, line 5, step 1 (a), field timeout: ")


def test_parsed_object_errors_name_step_and_field_without_a_line() -> None:
    data = {"name": "x", "steps": [{"command": "echo"}, {"id": "b", "command": "x", "timeout": 0}]}
    with pytest.raises(PlaybookError) as info:
        load_playbook(data)
    message = str(info.value)
    assert message.startswith("playbook: <request>, step 2 (b), field timeout: ")
    assert "line" not in message
    assert info.value.line is None


def test_yaml_error_line_comes_from_the_parser() -> None:
    text = "name: x\nsteps:\n  - command: echo\n    env: {A: 1\n"
    with pytest.raises(PlaybookError) as info:
        load_playbook(text, source_name="p.yml")
    assert info.value.line is not None and info.value.line >= 4


def test_a_huge_request_is_refused_before_parsing() -> None:
    with pytest.raises(PlaybookError, match="larger than"):
        load_playbook("#" * 1_000_001)


def test_aliases_are_not_walked_twice() -> None:
    # A "billion laughs" document: every level doubles; walking it naively would never end.
    lines = ["a0: &a0 [x, x]"] + [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}]" for i in range(1, 40)]
    text = "\n".join(lines) + "\nname: x\nsteps: *a39\n"
    with pytest.raises(PlaybookError) as info:
        load_playbook(text, source_name="bomb.yml")
    assert "bomb.yml" in str(info.value)


# --- valid playbooks -----------------------------------------------------------------------------

FULL = """\
name: Inventory check
description: optional text
options: {working_dir: /tmp, timeout: 300, aws_profile: ops, aws_region: eu-west-1}
params: {bucket: logs-archive, region: eu-west-1, count: 3, dry: true}
max_concurrent: 1
steps:
  - id: list
    name: List EC2 Instances
    command: aws ec2 describe-instances --region {{ params.region }}
    continue_on_error: false
    timeout: 60
    env: {PAGER: ""}
    queue: eu-hosts
    retries: 1
  - command: echo {{ params.bucket }} {{ params.count }} {{ params.dry }}
  - command: aws s3 ls s3://{{ params.bucket }}/
    working_dir: /var/tmp
    aws_profile: audit
    aws_region: "{{ params.region }}"
    queue: "host-{{ params.region }}"
    env: {TARGET: "s3://{{ params.bucket }}", LEVEL: 2}
"""


def test_contract_example_loads_with_defaults_applied() -> None:
    pb = load_playbook(FULL, source_name="inventory.yml")
    assert pb.name == "Inventory check"
    assert pb.max_concurrent == 1
    assert {k: p.default for k, p in pb.params.items()} == {
        "bucket": "logs-archive",
        "region": "eu-west-1",
        "count": "3",
        "dry": "true",
    }
    assert {p.type for p in pb.params.values()} == {"string"}
    assert [s.id for s in pb.steps] == ["list", "step_2", "step_3"]
    assert [s.name for s in pb.steps] == ["List EC2 Instances", "step_2", "step_3"]
    assert load_playbook("name: x\nsteps:\n  - {id: 1, command: 'true'}\n").steps[0].id == "1"
    second = pb.steps[1]
    assert (second.continue_on_error, second.retries, second.timeout, second.env) == (
        False,
        0,
        None,
        {},
    )
    assert pb.steps[2].env == {"TARGET": "s3://{{ params.bucket }}", "LEVEL": "2"}
    assert pb.source == "inventory.yml"


def test_minimal_playbook_and_parsed_object_give_the_same_model() -> None:
    text = "name: tiny\nsteps:\n  - command: 'true'\n"
    pb = load_playbook(text)
    assert pb == load_playbook({"name": "tiny", "steps": [{"command": "true"}]})
    assert pb.description is None and pb.max_concurrent is None and pb.params == {}
    assert pb.options.model_dump() == {
        "working_dir": None,
        "timeout": None,
        "aws_profile": None,
        "aws_region": None,
    }


def test_model_round_trips_through_json() -> None:
    pb = load_playbook(FULL)
    again = load_playbook(json.loads(pb.model_dump_json()))
    assert again == pb


def test_rendered_steps_take_step_values_else_playbook_options() -> None:
    pb = load_playbook(FULL)
    first, second, third = render_playbook(pb)

    assert (first.step_id, first.step_name, first.step_number, first.total_steps) == (
        "list",
        "List EC2 Instances",
        1,
        3,
    )
    assert first.command_type == "aws_cli"
    assert first.argv == ("aws", "ec2", "describe-instances", "--region", "eu-west-1")
    assert first.script is None
    assert first.display_command == "aws ec2 describe-instances --region eu-west-1"
    opts = first.options
    assert (opts.timeout, opts.working_dir, opts.aws_profile, opts.aws_region) == (
        60,
        "/tmp",
        "ops",
        "eu-west-1",
    )
    assert (first.queue, first.retries, first.continue_on_error, first.env) == (
        "eu-hosts",
        1,
        False,
        {"PAGER": ""},
    )

    assert second.command_type == "script"
    assert second.argv is None
    assert second.script == "echo 'logs-archive' '3' 'true'"
    assert second.display_command == "echo logs-archive 3 true"
    assert (second.options.timeout, second.queue, second.retries) == (300, None, 0)

    assert third.options.model_dump() == {
        "working_dir": "/var/tmp",
        "timeout": 300,
        "aws_profile": "audit",
        "aws_region": "eu-west-1",
    }
    assert third.queue == "host-eu-west-1"
    assert third.env == {"TARGET": "s3://logs-archive", "LEVEL": "2"}


def test_run_params_override_defaults() -> None:
    pb = load_playbook(FULL, params={"region": "us-east-2"})
    step = render_step(pb, 0, {"region": "us-east-2"})
    assert step.argv is not None and step.argv[-1] == "us-east-2"
    assert render_step(pb, 2, {"region": "us-east-2"}).options.aws_region == "us-east-2"
    assert render_step(pb, 0).argv == ("aws", "ec2", "describe-instances", "--region", "eu-west-1")


def test_render_options_for_execution_started() -> None:
    text = (
        "name: x\noptions: {aws_region: '{{ params.r }}', timeout: 5}\n"
        "steps:\n  - command: 'true'\n"
    )
    pb = load_playbook(text, params={"r": "ap-south-1"})
    options = render_options(pb, {"r": "ap-south-1"})
    assert options.wire() == {"awsRegion": "ap-south-1", "timeout": 5}


def test_rendered_step_round_trips_as_json() -> None:
    pb = load_playbook(FULL)
    for step in render_playbook(pb):
        data = json.loads(json.dumps(step.to_dict()))
        assert RenderedStep.from_dict(data) == step


def test_render_step_index_outside_the_steps() -> None:
    pb = load_playbook(FULL)
    with pytest.raises(IndexError):
        render_step(pb, 3)
    with pytest.raises(IndexError):
        render_step(pb, -1)


# --- params --------------------------------------------------------------------------------------

NEEDS_HOST = "name: x\nsteps:\n  - id: ping\n    command: ping -c1 {{ params.host }}\n"


def test_param_without_default_is_refused_at_load_and_at_render() -> None:
    with pytest.raises(PlaybookError) as info:
        load_playbook(NEEDS_HOST, source_name="ping.yml")
    assert info.value.field == "params"
    assert "ping.yml, line 4, step 1 (ping), field command" in str(info.value)
    assert "--param host=VALUE" in str(info.value)

    pb = load_playbook(NEEDS_HOST, source_name="ping.yml", params={"host": "10.0.0.1"})
    assert render_step(pb, 0, {"host": "10.0.0.1"}).script == "ping -c1 '10.0.0.1'"
    with pytest.raises(PlaybookError) as info:
        render_step(pb, 0, {})
    assert "ping.yml, step 1 (ping), field command: {{ params.host }} has no value" in str(
        info.value
    )


def test_run_param_the_playbook_does_not_know_is_refused() -> None:
    with pytest.raises(PlaybookError) as info:
        load_playbook(FULL, source_name="inv.yml", params={"regoin": "eu-west-2"})
    assert info.value.field == "params"
    assert "inv.yml" in str(info.value)
    assert "unknown param 'regoin'" in str(info.value)
    assert "bucket, count, dry, region" in str(info.value)


def test_run_param_values() -> None:
    pb = load_playbook(NEEDS_HOST, params={"host": "h"})
    assert resolve_params(pb, {"host": 7}) == {"host": "7"}
    assert resolve_params(pb, {"host": False}) == {"host": "false"}
    for bad in ({"host": ["a"]}, {"host": None}, {"host": "a\x00b"}, {"bad-name": "x"}):
        with pytest.raises(PlaybookError) as info:
            resolve_params(pb, bad)
        assert info.value.field == "params"


def test_templated_option_that_renders_badly_is_refused_at_render() -> None:
    text = "name: x\nsteps:\n  - id: a\n    command: 'true'\n    queue: 'q-{{ params.h }}'\n"
    pb = load_playbook(text, params={"h": "ok"})
    assert render_step(pb, 0, {"h": "ok"}).queue == "q-ok"
    with pytest.raises(PlaybookError) as info:
        render_step(pb, 0, {"h": "a b; c"})
    assert "step 1 (a), field queue" in str(info.value)


def test_parse_param_args() -> None:
    assert parse_param_args([]) == {}
    assert parse_param_args(["a=1", "b=x=y", "c=", "a=2", "d= sp ace "]) == {
        "a": "2",
        "b": "x=y",
        "c": "",
        "d": " sp ace ",
    }
    for bad in ["novalue", "=x", "my-bucket=x", "1x=2", " a=1"]:
        with pytest.raises(InvalidRequestError) as info:
            parse_param_args([bad])
        assert info.value.field == "param"
        assert repr(bad) in str(info.value) or bad.partition("=")[0] in str(info.value)


def test_literal_braces_can_be_written() -> None:
    text = "name: x\nsteps:\n  - command: \"printf '%s' {{ '{{' }}.Names}}\"\n"
    step = render_step(load_playbook(text), 0)
    assert step.display_command == "printf '%s' {{.Names}}"
    assert _bash(step) == b"{{.Names}}"


# --- values never become code --------------------------------------------------------------------


def _one_param_playbook(command: str, value: str) -> Playbook:
    return load_playbook(
        {"name": "inject", "steps": [{"id": "s", "command": command}]}, params={"v": value}
    )


def _bash(step: RenderedStep, cwd: str | None = None) -> bytes:
    assert step.script is not None
    done = subprocess.run(
        ["bash", "-c", step.script],
        capture_output=True,
        cwd=cwd,
        timeout=10,
        check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("value", NASTY)
def test_aws_cli_value_stays_one_argument(value: str) -> None:
    pb = _one_param_playbook(
        "aws s3 cp 's3://bucket/{{ params.v }}' - --region {{ params.v }} --sse", value
    )
    step = render_step(pb, 0, {"v": value})
    assert step.command_type == "aws_cli"
    assert step.argv == ("aws", "s3", "cp", f"s3://bucket/{value}", "-", "--region", value, "--sse")
    assert step.display_command == f"aws s3 cp 's3://bucket/{value}' - --region {value} --sse"


# Each line prints the value in one shell context, NUL-terminated.
EVERY_CONTEXT = "\n".join(
    [
        "printf '%s\\0' {{ params.v }}",
        "printf '%s\\0' \"{{ params.v }}\"",
        "printf '%s\\0' '{{ params.v }}'",
        "printf '%s\\0' $'{{ params.v }}'",
        "printf '%s\\0' pre{{ params.v }}post",
        "x={{ params.v }}; printf '%s\\0' \"$x\"",
        "y=$(printf '%s' {{ params.v }}; printf .); printf '%s\\0' \"${y%.}\"",
        'y="$(printf \'%s\' "in {{ params.v }}"; printf .)"; printf \'%s\\0\' "${y%.}"',
        "[ -n {{ params.v }} ] || [ -z {{ params.v }} ]",
        "printf '%s\\0' done # {{ params.v }}",
        "printf '%s\\0' end",
    ]
)


def _expected(value: str) -> bytes:
    v = value.encode()
    printed = [v, v, v, v, b"pre" + v + b"post", v, v, b"in " + v, b"done", b"end"]
    return b"".join(p + b"\0" for p in printed)


def _run_in_empty_dir(step: RenderedStep) -> bytes:
    with tempfile.TemporaryDirectory() as cwd:
        out = _bash(step, cwd=cwd)
        assert os.listdir(cwd) == []  # nothing was created: no `touch pwned`, no `> pwned`
    return out


def test_every_context_is_recognised() -> None:
    plan = plan_command(EVERY_CONTEXT)
    assert plan.command_type == "script"
    assert plan.contexts is not None
    assert [c.value for c in plan.contexts] == [
        "unquoted",
        "double-quoted",
        "single-quoted",
        "ansi-c",
        "unquoted",
        "unquoted",
        "unquoted",
        "double-quoted",
        "unquoted",
        "unquoted",
        "comment",
    ]


@pytest.mark.parametrize("value", NASTY)
def test_script_value_is_printed_literally_and_runs_nothing(value: str) -> None:
    pb = _one_param_playbook(EVERY_CONTEXT, value)
    step = render_step(pb, 0, {"v": value})
    assert step.command_type == "script"
    assert _run_in_empty_dir(step) == _expected(value)


_VALUES = st.text(
    alphabet=st.one_of(
        st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
        st.sampled_from(list("'\"\\$`;|&<>(){}[]*?~#!\n\t =")),
    ),
    max_size=30,
) | st.lists(st.sampled_from(NASTY), max_size=4).map("".join)


@settings(max_examples=150, deadline=None)
@given(value=_VALUES)
def test_any_value_is_literal_in_every_context(value: str) -> None:
    pb = _one_param_playbook(EVERY_CONTEXT, value)
    assert _run_in_empty_dir(render_step(pb, 0, {"v": value})) == _expected(value)


@settings(max_examples=200, deadline=None)
@given(value=_VALUES)
def test_any_value_is_one_aws_argument(value: str) -> None:
    pb = _one_param_playbook('aws ssm get-parameter --name "/app/{{ params.v }}"', value)
    assert render_step(pb, 0, {"v": value}).argv == (
        "aws",
        "ssm",
        "get-parameter",
        "--name",
        f"/app/{value}",
    )


def test_unquoted_values_are_shlex_quoted() -> None:
    for value in NASTY:
        quoted = quote_for(ShellContext.UNQUOTED, value)
        assert shlex.split(quoted) == [value]
        if shlex.quote(value).startswith("'"):
            assert quoted == shlex.quote(value)
    # Unlike shlex.quote, a safe-looking value is quoted too: `{a,{{ params.v }}}` stays 2 words.
    assert quote_for(ShellContext.UNQUOTED, "b,c") == "'b,c'"


@pytest.mark.parametrize(
    "command",
    [
        "echo `echo {{ params.v }}`",
        "echo $(( {{ params.v }} + 1 ))",
        "(( {{ params.v }} > 1 ))",
        "echo $[ {{ params.v }} ]",
        "let n={{ params.v }}",
        "[[ {{ params.v }} -eq 1 ]] && echo one",
        "arr[{{ params.v }}]=1",
        "arr=([{{ params.v }}]=1)",
        "echo ${HOME:-{{ params.v }}}",
        "cat <<EOF\n{{ params.v }}\nEOF",
        "cat <<'EOF'\n{{ params.v }}\nEOF",
        "cat <<-EOF\n\t{{ params.v }}\n\tEOF",
        "cat <<{{ params.v }}",
        "echo ${{ params.v }}",
        'echo "${{ params.v }}"',
        "echo \\{{ params.v }}",
        'echo "\\{{ params.v }}"',
        'echo "$(case x in x) echo {{ params.v }};; esac)"',
    ],
)
def test_places_where_quoting_cannot_protect_are_refused(command: str) -> None:
    with pytest.raises(TemplateError):
        plan_command(command)
    with pytest.raises(PlaybookError) as info:
        load_playbook(
            {"name": "x", "params": {"v": "1"}, "steps": [{"id": "s", "command": command}]},
            source_name="refuse.yml",
        )
    assert "refuse.yml, step 1 (s), field command" in str(info.value)


def test_params_after_a_heredoc_are_quoted_normally() -> None:
    command = "cat <<EOF\nbody $HOME\nEOF\nprintf '%s' {{ params.v }}"
    pb = _one_param_playbook(command, "; touch pwned")
    out = _run_in_empty_dir(render_step(pb, 0, {"v": "; touch pwned"}))
    assert out == b"body /nonexistent\n; touch pwned"


def test_single_bracket_arithmetic_compare_is_allowed() -> None:
    # `[` compares integers without evaluating code, unlike `[[ -eq ]]`.
    pb = _one_param_playbook("[ {{ params.v }} -eq 3 ] && printf yes", "3")
    assert _run_in_empty_dir(render_step(pb, 0, {"v": "3"})) == b"yes"


@pytest.mark.parametrize(
    ("command", "command_type"),
    [
        ("aws sts get-caller-identity", "aws_cli"),
        ("  aws s3 ls s3://b/{{ params.v }}  ", "aws_cli"),
        ("aws ec2 describe-instances --query 'Reservations[*]'", "aws_cli"),
        ("aws s3 ls | grep logs", "script"),
        ("aws s3 ls > out.txt", "script"),
        ("aws s3 cp $HOME/f s3://b/", "script"),
        ("aws s3 cp ~/f s3://b/", "script"),
        ("aws s3 cp *.log s3://b/", "script"),
        ("aws s3 ls\naws sts get-caller-identity", "script"),
        ("AWS_PAGER= aws s3 ls", "script"),
        ("awscli --version", "script"),
        ("aws{{ params.v }} x", "script"),
        ("echo aws", "script"),
    ],
)
def test_command_type(command: str, command_type: str) -> None:
    assert plan_command(command).command_type == command_type


def test_aws_command_with_shell_syntax_runs_as_a_quoted_script() -> None:
    pb = _one_param_playbook("aws s3 ls s3://{{ params.v }}/ | head -n1", "b; touch pwned")
    step = render_step(pb, 0, {"v": "b; touch pwned"})
    assert step.command_type == "script"
    assert step.script == "aws s3 ls s3://'b; touch pwned'/ | head -n1"


# --- the example playbooks -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hello.yml", "aws-inventory.yml"])
def test_example_playbooks_validate(name: str) -> None:
    path = EXAMPLES / name
    pb = load_playbook(path.read_text(), source_name=str(path))
    steps = render_playbook(pb)
    assert len(steps) == 3
    assert all(s.total_steps == 3 for s in steps)


def test_hello_example_runs_anywhere_and_uses_its_param() -> None:
    pb = load_playbook((EXAMPLES / "hello.yml").read_text(), params={"greeting": "hi; there"})
    assert [s.command_type for s in render_playbook(pb, {"greeting": "hi; there"})] == [
        "script"
    ] * 3
    first = render_step(pb, 0, {"greeting": "hi; there"})
    assert _bash(first).startswith(b"hi; there\n")


def test_aws_inventory_example() -> None:
    pb = load_playbook((EXAMPLES / "aws-inventory.yml").read_text())
    steps = render_playbook(pb, {"region": "eu-west-3"})
    assert [s.command_type for s in steps] == ["aws_cli"] * 3
    assert steps[0].argv == ("aws", "sts", "get-caller-identity", "--output", "json")
    assert steps[1].argv is not None
    assert steps[1].argv[:5] == ("aws", "ec2", "describe-instances", "--region", "eu-west-3")
    assert [s.continue_on_error for s in steps] == [False, True, False]
    assert steps[2].argv == ("aws", "s3", "ls")


# Pieces of shell syntax a template may be made of; the scanner must never accept a template in
# which some value could run a command. (No `>` here: a redirection would create files itself.)
_FRAGMENTS = [
    "echo ", "printf %s ", " ", "'", '"', "$(", ")", "`", "$((", "))", "((", "${x:-", "}", "\\",
    "#", "\n", "<<EOF\n", "EOF\n", "<<'E'\n", "E\n", "<<-T\n", "\tT\n", ";", "|", "&&", "[[ ",
    " ]]", " -eq ", " == ", "let ", "case ", " in ", ") ", ";; ", "esac", "(", "$'", "a[", "]",
    "=", "x", "$", "$[", "{", "<(", "<<<", "if ", "then ", "fi", "true ",
]  # fmt: skip
_ATTACKS = [
    "'\"`$(touch pwned)`;touch pwned;#",
    "x\nEOF\ntouch pwned\n",
    "x\nE\ntouch pwned\nT\ntouch pwned",
    "a[$(touch pwned)]",
    "'; touch pwned; '",
    '"; touch pwned; "',
    "\\'; touch pwned #",
    ")\ntouch pwned\n(",
    "}; touch pwned; {",
    "`touch pwned`",
    "$(touch pwned)",
    "\ntouch pwned\n",
]


@settings(max_examples=400, deadline=None)
@given(
    pieces=st.lists(st.sampled_from([*_FRAGMENTS, "{{ params.v }}"]), min_size=1, max_size=14),
    value=st.sampled_from(_ATTACKS),
)
def test_no_template_the_scanner_accepts_lets_a_value_run_a_command(
    pieces: list[str], value: str
) -> None:
    template = "".join([*pieces, " {{ params.v }}"] if "{{ params.v }}" not in pieces else pieces)
    try:
        plan = plan_command(template)
    except TemplateError:
        return
    if plan.command_type != "script":
        return
    _, _, script = plan.render({"v": value})
    assert script is not None
    with tempfile.TemporaryDirectory() as cwd:
        subprocess.run(
            ["bash", "-c", script],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            timeout=10,
            check=False,
        )
        assert os.listdir(cwd) == [], script


def test_fan_out_fields_are_rendered_with_params_and_round_trip() -> None:
    text = (
        "name: x\nparams: {r: eu, h: web1}\nsteps:\n"
        "  - id: a\n    command: echo\n    targets: {labels: {region: '{{ params.r }}'}}\n"
        "    parallel: 2\n    max_failures: 0\n"
        "  - id: b\n    command: echo\n    targets: {hosts: ['{{ params.h }}@eu', db@eu]}\n"
        "  - id: c\n    command: echo\n    targets: {queue: 'q-{{ params.r }}'}\n"
        "  - id: d\n    command: echo\n"
    )
    pb = load_playbook(text, params={"r": "us"})
    a, b, c, d = render_playbook(pb, {"r": "us"})
    assert (a.targets, a.parallel, a.max_failures) == ({"labels": {"region": "us"}}, 2, 0)
    assert b.targets == {"hosts": ["web1@eu", "db@eu"]} and b.parallel is None
    assert c.targets == {"queue": "q-us"}
    assert d.targets is None and d.max_failures is None
    for step in (a, b, c, d):
        assert RenderedStep.from_dict(json.loads(json.dumps(step.to_dict()))) == step
    with pytest.raises(PlaybookError, match=r"targets\.queue"):
        render_step(pb, 2, {"r": "u s"})
