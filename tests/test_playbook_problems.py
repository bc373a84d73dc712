"""A bad playbook is refused with every problem listed, each naming the source, the step and
the field (CONTRACT §5, issue 14 item 7); `name` defaults to the file's name. Pure units."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from events.errors import InvalidRequestError, Problem, ProblemsError
from worker.playbook.errors import PlaybookError, PlaybookProblem
from worker.playbook.loading import default_name, load_playbook
from worker.playbook.locate import MAX_LISTED_PROBLEMS
from worker.playbook.render import render_all, render_playbook
from worker.playbook.run import prepare_playbook

# Four problems of different kinds in three steps, and no `name`.
FOUR_IN_THREE = """\
steps:
  - id: fetch
    command: echo fetch
    retris: 2
  - id: build
    command: "echo {{ params. }}"
    timeout: 0
  - id: fetch
    command: echo again
"""

# (loc, line, step number, step id, key, a part of the problem), in document order.
FOUR_EXPECTED = [
    (("playbook", "steps", 0, "retris"), 4, 1, "fetch", "retris", "did you mean 'retries'"),
    (("playbook", "steps", 1, "command"), 6, 2, "build", "command", "malformed template"),
    (("playbook", "steps", 1, "timeout"), 7, 2, "build", "timeout", "the integer 0"),
    (("playbook", "steps", 2, "id"), 8, 3, "fetch", "id", "duplicate step id 'fetch'"),
]


def refused(source: str | dict[str, Any], **kwargs: Any) -> PlaybookError:
    with pytest.raises(PlaybookError) as info:
        load_playbook(source, **kwargs)
    return info.value


def facts(p: PlaybookProblem) -> tuple[Any, ...]:
    return (p.loc, p.line, p.step_number, p.step_id, p.key)


def test_four_problems_in_three_steps_are_all_listed_in_document_order() -> None:
    err = refused(FOUR_IN_THREE, source_name="deploy/build.yml")
    assert [facts(p) for p in err.located] == [e[:5] for e in FOUR_EXPECTED]
    for p, expected in zip(err.located, FOUR_EXPECTED, strict=True):
        assert expected[5] in p.problem
        step = f"step {p.step_number} ({p.step_id})"
        assert p.msg == f"deploy/build.yml, line {p.line}, {step}, field {p.key}: {p.problem}"
        assert "\n" not in p.msg
    # The exception's one line: the first problem, and how many follow.
    assert str(err) == f"playbook: {err.located[0].msg} (and 3 more problems)"
    assert (err.field, err.line, err.step_id, err.more) == ("playbook", 4, "fetch", 3)
    assert isinstance(err, ProblemsError) and isinstance(err, InvalidRequestError)
    assert err.problems == err.located


def test_a_parsed_object_lists_the_same_problems_by_step_without_lines() -> None:
    err = refused(yaml.safe_load(FOUR_IN_THREE))
    assert [p.loc for p in err.located] == [e[0] for e in FOUR_EXPECTED]
    assert {p.line for p in err.located} == {None}
    assert all(
        p.msg.startswith(f"<request>, step {p.step_number} ({p.step_id}), field ")
        for p in err.located
    )


def test_a_duplicate_id_is_found_beside_a_bad_step_and_each_duplicate_once() -> None:
    data = {
        "steps": [
            {"id": "a", "command": "echo"},
            {"id": "a", "command": "echo", "timeout": -1},
            {"command": "echo"},
            {"id": "step_3", "command": "echo"},
            {"id": "bad id", "command": "echo"},
            {"id": "bad id", "command": "echo"},
        ]
    }
    err = refused(data)
    assert [(p.loc, p.problem[:22]) for p in err.located] == [
        (("playbook", "steps", 1, "timeout"), "must be a whole number"),
        (("playbook", "steps", 1, "id"), "duplicate step id 'a',"),
        (("playbook", "steps", 3, "id"), "duplicate step id 'ste"),
        (("playbook", "steps", 4, "id"), "must be letters, digit"),
        (("playbook", "steps", 5, "id"), "must be letters, digit"),
    ]


def test_every_duplicate_key_is_listed_and_the_rest_still_checked() -> None:
    text = "name: a\nname: b\nsteps:\n  - command: echo\n    command: echo\n    timeout: 0\n"
    err = refused(text, source_name="dup.yml")
    assert [(p.loc, p.line) for p in err.located] == [
        (("playbook", "name"), 2),
        (("playbook", "steps", 0, "command"), 5),
        (("playbook", "steps", 0, "timeout"), 6),
    ]
    assert "appears twice in one mapping (lines 4 and 5)" in err.located[1].msg


def test_the_runs_params_are_checked_even_when_a_step_is_refused() -> None:
    text = (
        "params: {region: eu-west-1}\n"
        "steps:\n"
        "  - id: a\n    command: echo {{ params.who }} {{ params.region }}\n    retries: 99\n"
        "  - id: b\n    command: echo {{ params.who }}\n"
    )
    err = refused(text, source_name="p.yml", params={"regoin": "x", "region": ["not", "text"]})
    assert [(p.field, p.loc) for p in err.located] == [
        ("playbook", ("playbook", "steps", 0, "retries")),
        ("params", ("params", "regoin")),
        ("params", ("params", "region")),
        ("params", ("params", "who")),  # used twice, missing once
    ]
    unknown, bad_value, missing = err.located[1:]
    assert (
        unknown.msg
        == "p.yml, params: unknown param 'regoin'; this playbook's params are: region, who"
    )
    assert bad_value.msg.startswith("p.yml, params: param 'region' must be a string")
    assert missing.msg.startswith(
        "p.yml, line 4, step 1 (a), field command: {{ params.who }} has no value"
    )


def test_a_bad_param_name_and_a_bad_template_are_both_listed() -> None:
    err = refused({"steps": [{"command": "echo {{ foo }}"}]}, params={"bad-name": "x"})
    assert [p.loc for p in err.located] == [
        ("playbook", "steps", 0, "command"),
        ("params", "bad-name"),
    ]


def test_values_that_make_fields_unusable_are_listed_for_every_step() -> None:
    text = (
        "options: {aws_region: '{{ params.r }}'}\n"
        "steps:\n"
        "  - {id: a, command: 'true', queue: 'q-{{ params.q }}'}\n"
        "  - {id: b, command: 'true', queue: 'q-{{ params.q }}', aws_profile: '{{ params.p }}'}\n"
    )
    params = {"r": "eu west", "q": "a b", "p": "x y"}
    pb = load_playbook(text, source_name="r.yml", params=params)
    with pytest.raises(PlaybookError) as info:
        render_all(pb, params)
    # The options' region is inherited by both steps: one problem, not three.
    assert [p.loc for p in info.value.located] == [
        ("playbook", "options", "aws_region"),
        ("playbook", "steps", 0, "queue"),
        ("playbook", "steps", 1, "aws_profile"),
        ("playbook", "steps", 1, "queue"),
    ]
    assert {p.field for p in info.value.located} == {"params"}
    with pytest.raises(PlaybookError) as again:
        prepare_playbook(text, params, source="r.yml")
    assert again.value.located == info.value.located
    assert render_playbook(pb, {"r": "eu-west-1", "q": "b", "p": "ops"})[1].queue == "q-b"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("steps: [\n", "YAML syntax error"),
        ("", "is empty: a playbook needs at least `steps`"),
        ("- command: echo\n", "must be a mapping with `steps` at the top, got a list"),
        ("#" * 1_000_001, "is larger than"),
    ],
)
def test_what_stops_the_check_is_one_problem(text: str, says: str) -> None:
    err = refused(text, source_name="x.yml")
    assert len(err.located) == 1 and err.located[0].loc == ("playbook",)
    assert says in err.located[0].msg and err.located[0].msg.startswith("x.yml")


def test_name_defaults_to_the_files_name_or_playbook_for_a_request() -> None:
    text = "steps:\n  - command: echo\n"
    assert load_playbook(text, source_name="deploy/examples/inventory-check.yml").name == (
        "inventory-check"
    )
    assert load_playbook(text, source_name="ops.yaml").name == "ops"
    assert load_playbook(text).name == "playbook"
    assert load_playbook({"steps": [{"command": "echo"}]}).name == "playbook"
    assert load_playbook("name: Mine\n" + text, source_name="ops.yaml").name == "Mine"
    assert [default_name(s) for s in ("<request>", "a/b.c.yml", "", "noext")] == [
        "playbook",
        "b.c",
        "playbook",
        "noext",
    ]
    # Present but unusable is still refused: only a missing name is defaulted.
    for bad in ("name: ''\n", "name:\n", "name: [a]\n"):
        assert refused(bad + text, source_name="ops.yaml").located[0].loc == ("playbook", "name")


def test_problems_error_needs_a_problem_and_counts_the_rest() -> None:
    with pytest.raises(ValueError):
        ProblemsError([])
    one = ProblemsError([Problem(("playbook", "steps"), "x: bad")])
    assert (one.field, str(one)) == ("playbook", "playbook: x: bad")
    two = ProblemsError([Problem(("params", "a"), "m1"), Problem(("params", "b"), "m2")])
    assert str(two) == "params: m1 (and 1 more problem)"
    assert ProblemsError([Problem((), "m")]).field == "request"


def test_past_two_hundred_problems_the_rest_are_counted() -> None:
    err = refused({"steps": [{"command": "echo", "timeout": 0}] * 250}, source_name="big.yml")
    assert len(err.located) == MAX_LISTED_PROBLEMS + 1 == 201
    assert [p.step_number for p in err.located[:3]] == [1, 2, 3]
    assert err.located[-1].msg == "big.yml: 50 more problems, not listed"


def test_long_values_are_cut_short_in_every_message_and_location() -> None:
    long_id, bad_id, key = "x" * 5000, "é" * 5000, "k" * 5000
    steps = [{"id": long_id, "command": "echo", "timeout": 0}, {"id": bad_id, "command": "echo"}]
    err = refused({"steps": [*steps, {"command": "echo", key: 1}]}, params={key: "v"})
    assert len(err.located) == 4
    for p in err.located:
        assert len(p.msg) < 500 and sum(len(str(part)) for part in p.loc) < 200, p.msg
    assert "step 1 (" + "x" * 40 + "...), field timeout" in err.located[0].msg
