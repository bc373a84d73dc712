"""What a rerun runs (events.rerun.plan_rerun) and the spec it runs (worker.playbook.rerun)."""

from __future__ import annotations

from typing import Any

import pytest

from events.errors import CannotRerunError
from events.rerun import NOTHING_TO_RERUN, RerunHosts, RerunPlan, RerunSource, plan_rerun
from worker.playbook.rerun import rerun_spec
from worker.playbook.run import step_records_of

FAILED, ALL = RerunHosts.FAILED, RerunHosts.ALL


def host(name: str, status: str) -> dict[str, Any]:
    return {"host": name, "status": status}


def playbook_run(status: str, *steps: dict[str, Any]) -> RerunSource:
    record = {"commandType": "playbook", "status": status, "steps": list(steps)}
    return RerunSource("ex_old", record, {"playbook": "p", "steps": []})


def step(status: str, hosts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"stepId": "s", "stepName": "s", "status": status} | ({"hosts": hosts} if hosts else {})


def test_starts_at_the_first_step_that_did_not_succeed_with_its_failed_hosts() -> None:
    fan = step(
        "failed",
        [host(f"h{i}", s) for i, s in enumerate(["completed", "failed", "timeout", "lost"])]
        + [host("h4", "skipped"), host("h5", "cancelled")],
    )
    source = playbook_run("failed", step("completed"), fan, step("pending"))
    assert plan_rerun(source, FAILED) == RerunPlan(1, ("h1", "h2", "h3", "h4", "h5"))
    assert plan_rerun(source, ALL) == RerunPlan(1)  # its targets as written


def test_a_step_that_failed_but_went_on_counts_and_a_one_host_step_has_no_subset() -> None:
    # continue_on_error: the run completed, yet step 2 did not succeed.
    source = playbook_run("completed", step("completed"), step("failed"), step("completed"))
    assert plan_rerun(source, FAILED) == RerunPlan(1)
    # A fan-out step whose hosts all succeeded but which still failed runs as written.
    source = playbook_run("failed", step("failed", [host("a", "completed")]))
    assert plan_rerun(source, FAILED) == RerunPlan(0)
    # A cancelled run: the step it was in is where the rerun starts.
    source = playbook_run("cancelled", step("completed"), step("cancelled"), step("pending"))
    assert plan_rerun(source, FAILED) == RerunPlan(1)


def test_nothing_failed_is_refused_unless_all() -> None:
    source = playbook_run("completed", step("completed"), step("completed"))
    with pytest.raises(CannotRerunError, match=NOTHING_TO_RERUN):
        plan_rerun(source, FAILED)
    assert plan_rerun(source, ALL) == RerunPlan(0)


def test_a_command_reruns_as_a_whole() -> None:
    spec = {"command": "false", "commandType": "script", "options": {}}
    failed = RerunSource("ex_c", {"commandType": "script", "status": "failed"}, spec)
    assert plan_rerun(failed, FAILED) == RerunPlan(0)
    done = RerunSource("ex_c", {"commandType": "script", "status": "completed"}, spec)
    with pytest.raises(CannotRerunError, match=NOTHING_TO_RERUN):
        plan_rerun(done, FAILED)
    assert plan_rerun(done, ALL) == RerunPlan(0)


@pytest.mark.parametrize("status", ["queued", "running"])
def test_an_execution_not_ended_is_refused(status: str) -> None:
    with pytest.raises(CannotRerunError, match=f"still {status}"):
        plan_rerun(playbook_run(status, step("running")), ALL)


def test_without_a_stored_spec_it_says_so() -> None:
    source = RerunSource("ex_old", {"commandType": "script", "status": "failed"}, None)
    with pytest.raises(CannotRerunError, match="no stored spec"):
        plan_rerun(source, FAILED)


def test_saved_playbook_reference_is_kept() -> None:
    record = {"status": "failed", "playbookName": "rotate", "playbookVersion": 3}
    assert RerunSource("ex", record, {}).saved == ("rotate", 3)
    assert RerunSource("ex", {"status": "failed"}, {}).saved is None


def _step(sid: str, n: int, targets: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"step_id": sid, "step_name": sid.upper(), "step_number": n, "total_steps": 3} | {
        "targets": targets
    }


def test_the_spec_is_the_remaining_steps_numbered_from_1_with_a_frozen_subset() -> None:
    spec: dict[str, Any] = {
        "playbook": "p",
        "options": {"timeout": 5},
        "steps": [_step("a", 1), _step("b", 2, {"queue": "web"}), _step("c", 3, {"queue": "w"})],
    }
    new = rerun_spec(spec, RerunPlan(1, ("w2@t",)))
    assert new["playbook"] == "p" and new["options"] == {"timeout": 5}
    assert [(s["step_id"], s["step_number"], s["total_steps"]) for s in new["steps"]] == [
        ("b", 1, 2),
        ("c", 2, 2),
    ]
    assert new["steps"][0]["targets"] == {"hosts": ["w2@t"]}
    assert new["steps"][1]["targets"] == {"queue": "w"}  # later steps as written
    assert spec["steps"][1]["targets"] == {"queue": "web"}  # the old spec is left alone
    assert [(r.step_id, r.step_name) for r in step_records_of(new)] == [("b", "B"), ("c", "C")]
    assert rerun_spec(spec, RerunPlan(1))["steps"][0]["targets"] == {"queue": "web"}
