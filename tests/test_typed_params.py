"""Typed params (CONTRACT §10, issue 17 item 2): declarations, values, and secrets kept out of
the record's spec (the pure rules; the fleet's acceptance is tests/db/test_typed_params_fleet)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from events.errors import ProblemsError
from events.params import ParamDecl, ParamError, ParamType, declaration, wire_params
from worker.playbook.errors import PlaybookError
from worker.playbook.loading import check_for_saving, load_playbook
from worker.playbook.params import resolve_params
from worker.playbook.run import prepare_playbook
from worker.playbook.secrets import (
    MissingSecretError,
    rerun_secrets,
    secrets_of,
    step_of,
    with_secrets,
)

TYPED = """\
name: typed
params:
  region: {type: choice, choices: [eu-west-1, us-east-1], default: eu-west-1}
  keep:   {type: int, min: 1, max: 30, required: true}
  dry_run: {type: bool, default: true}
  tag: {type: string, pattern: '[a-z]+', default: abc}
  api_key: {type: secret}
  bucket: logs-archive
steps:
  - id: show
    command: echo {{ params.region }} {{ params.keep }} {{ params.dry_run }} {{ params.tag }}
  - id: use
    command: echo "key={{ params.api_key }}" $KEY
    env: {KEY: "{{ params.api_key }}", OTHER: "{{ params.bucket }}"}
"""
SECRET = "s3cr3t-value-42"


def problems_of(params: dict[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    with pytest.raises(PlaybookError) as info:
        load_playbook(TYPED, source_name="typed.yml", params=params)
    return [(p.loc, p.msg) for p in info.value.problems]


def test_defaults_apply_and_values_are_text_of_their_type() -> None:
    pb = load_playbook(TYPED, params={"keep": "7", "api_key": SECRET})
    assert resolve_params(pb, {"keep": 7, "api_key": SECRET, "dry_run": "False"}) == {
        "region": "eu-west-1",
        "keep": "7",
        "dry_run": "false",
        "tag": "abc",
        "api_key": SECRET,
        "bucket": "logs-archive",
    }
    assert pb.params["keep"] == ParamDecl(type=ParamType.INT, required=True, min=1, max=30)
    assert pb.params["bucket"] == ParamDecl(default="logs-archive")  # a bare value: a string


@pytest.mark.parametrize(
    ("params", "name", "says"),
    [
        ({"keep": None}, "keep", "param 'keep' is required"),
        ({"keep": "seven"}, "keep", "must be a whole number, got the string 'seven'"),
        ({"keep": True}, "keep", "must be a whole number, got the boolean true"),
        ({"keep": 31}, "keep", "must be from 1 to 30, got 31"),
        ({"keep": 0}, "keep", "must be from 1 to 30, got 0"),
        ({"region": "mars"}, "region", "must be one of eu-west-1, us-east-1"),
        ({"tag": "ABC"}, "tag", "must match the pattern '[a-z]+', got 'ABC'"),
        ({"dry_run": "maybe"}, "dry_run", "must be true or false"),
        ({"api_key": ["x"]}, "api_key", "must be a string, got a list"),
        ({"api_key": None}, "api_key", "param 'api_key' is required"),  # used, no default
    ],
)
def test_each_bad_value_is_a_problem_naming_the_param(
    params: dict[str, Any], name: str, says: str
) -> None:
    given = {k: v for k, v in ({"keep": 2, "api_key": SECRET} | params).items() if v is not None}
    found = dict(problems_of(given))
    assert list(found) == [("params", name)]
    msg = found[("params", name)]
    assert says in msg and msg.startswith("typed.yml, "), msg


def test_every_problem_at_once_and_a_secret_is_never_shown() -> None:
    found = problems_of({"keep": 99, "region": "x", "tag": "1", "dry_run": 3, "api_key": 7})
    assert [loc for loc, _ in found] == [
        ("params", "keep"),
        ("params", "region"),
        ("params", "tag"),
        ("params", "dry_run"),
        ("params", "api_key"),
    ]
    assert dict(found)[("params", "api_key")].endswith("must be a string, got int")
    # A refused string value of a secret would be a leak: a secret takes any string.
    with pytest.raises(ParamError) as info:
        declaration({"type": "secret"}).text(["hunter2"])
    assert "hunter2" not in str(info.value)


def test_bad_declarations_are_problems_of_the_playbook_each_located() -> None:
    text = """\
params:
  a: {type: float}
  b: {type: int, min: 5, max: 3}
  c: {type: choice, choices: [x, y], default: z}
  d: {type: secret, default: hunter2}
  e: {type: bool, pattern: x}
  f: {pattern: '('}
  g: {type: choice}
  h: {type: int, default: 40, max: 30, requird: true}
  ok: {type: secret}
steps:
  - command: echo hi
    queue: 'q-{{ params.ok }}'
"""
    with pytest.raises(PlaybookError) as info:
        check_for_saving(text, "bad.yml")
    found = {p.loc: p.msg for p in info.value.problems}
    says = {
        "a": "unknown type 'float' (one of string, int, bool, choice, secret)",
        "b": "min 5 is greater than max 3",
        "c": "default must be one of x, y, got 'z'",
        "d": "a secret param cannot have a default",
        "e": "`pattern` does not apply to a bool param",
        "f": "pattern '(' is not a regular expression",
        "g": "a choice param needs `choices`",
        "h": "unknown key 'requird'",
    }
    for name, said in says.items():
        msg = found[("playbook", "params", name)]
        assert said in msg and msg.startswith("bad.yml, line "), msg
    assert "hunter2" not in str(found)
    queue = found[("playbook", "steps", 0, "queue")]
    assert "secret param 'ok' can only be used in a step's command or env" in queue


def test_the_declarations_as_the_console_reads_them_and_round_trips() -> None:
    given = {"keep": "7", "api_key": SECRET}
    pb = load_playbook(TYPED, params=given)
    assert load_playbook(json.loads(pb.model_dump_json()), params=given) == pb

    wired = wire_params(yaml.safe_load(TYPED)["params"])
    assert wired[0] == {
        "name": "region",
        "required": False,
        "type": "choice",
        "default": "eu-west-1",
        "choices": ["eu-west-1", "us-east-1"],
    }
    assert wired[1] == {"name": "keep", "required": True, "type": "int", "min": 1, "max": 30}
    assert [w["type"] for w in wired] == ["choice", "int", "bool", "string", "secret", "string"]


def test_the_record_spec_holds_no_secret_and_the_task_renders_it_again() -> None:
    prepared = prepare_playbook(TYPED, {"keep": 3, "api_key": SECRET})
    spec = prepared.spec()
    stored = json.dumps(spec)
    assert SECRET not in stored and "***" in stored
    assert prepared.secrets == {"api_key": SECRET}
    first = spec["steps"][0]
    assert "template" not in first and first["script"] == "echo 'eu-west-1' '3' 'true' 'abc'"
    assert spec["steps"][1]["display_command"] == 'echo "key=***" $KEY'
    assert spec["steps"][1]["env"] == {"KEY": "***", "OTHER": "logs-archive"}

    # The step task: the spec it read, with the secrets of its arguments.
    held = with_secrets(json.loads(stored), prepared.secrets)
    step = step_of(held, 1)
    assert step.script == f'echo "key={SECRET}" $KEY'
    assert step.env == {"KEY": SECRET, "OTHER": "logs-archive"}
    assert step.secrets == (SECRET,) and step_of(held, 0).secrets == (SECRET,)
    assert "secrets" not in step.to_dict()
    assert secrets_of(held) == {"api_key": SECRET}

    # Without them (a run that waited for a slot): it fails naming the param.
    with pytest.raises(MissingSecretError, match="secret param 'api_key'"):
        step_of(json.loads(stored), 1)
    assert step_of(json.loads(stored), 0).secrets == ()


def test_a_rerun_asks_for_the_secrets_again() -> None:
    spec = prepare_playbook(TYPED, {"keep": 3, "api_key": SECRET}).spec()
    with pytest.raises(ProblemsError) as info:
        rerun_secrets(spec, None)
    assert [p.loc for p in info.value.problems] == [("params", "api_key")]
    assert "never stored: give it again" in info.value.problems[0].msg
    with pytest.raises(ProblemsError) as info:
        rerun_secrets(spec, {"api_key": "x", "keep": "4"})
    assert [p.loc for p in info.value.problems] == [("params", "keep")]
    assert rerun_secrets(spec, {"api_key": "new"}) == {"api_key": "new"}
    plain_text = TYPED.replace("{type: secret}", "{type: string}")
    plain = prepare_playbook(plain_text, {"keep": 1, "api_key": "shown"}).spec()
    assert rerun_secrets(plain, None) == {}
