"""A rerun's playbook spec, cut from the old run's stored spec (CONTRACT §7).

The new run's steps are the old run's steps from `RerunPlan.start_index` on, numbered from 1
(its `playbook_step_start` events say `stepNumber` 1 of `totalSteps` remaining, as a fresh run
of those steps would), each keeping its original `stepId` and name. A fan-out first step with a
host subset gets `targets: {hosts: [...]}`, frozen here: the rest resolve as written. The steps
are the rendered ones the old run ran, so the params (and the saved playbook's version) are the
very ones it had, and nothing is rendered again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from events.rerun import RerunPlan


def rerun_spec(spec: Mapping[str, Any], plan: RerunPlan) -> dict[str, Any]:
    """The spec of the rerun of a playbook run whose spec is `spec`."""
    steps = [dict(s) for s in spec["steps"][plan.start_index :]]
    for number, step in enumerate(steps, start=1):
        step["step_number"] = number
        step["total_steps"] = len(steps)
    if plan.hosts is not None and steps[0].get("targets") is not None:
        # A named host that is offline by now fails there ("host offline"), as it would in
        # a playbook naming it.
        steps[0]["targets"] = {"hosts": list(plan.hosts)}
    return dict(spec) | {"steps": steps}
