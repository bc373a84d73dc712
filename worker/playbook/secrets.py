"""Secret params (CONTRACT §10): their values reach the step's process and nothing else.

The record's spec holds every step rendered with each secret as `***` (what the console and
a rerun see), and, for a step that uses one, its `template` (the command and env as written)
with the other params' values, so that the task running it renders it again with the real
values. Those travel only in the step tasks' arguments (`secrets`, shown as `***` in Celery's
logs and monitoring events): a step hands them to the next step's task, a fan-out step to its
hosts' tasks. Nothing writes them to Redis's records, the database or a log, so a run that must
get them from somewhere else (a rerun; a run that waited for a `max_concurrent` slot, which
another run's end starts) needs them given again, or fails naming the param.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from events.errors import CloudOpsError, Problem, ProblemsError
from events.masking import MASK
from events.wording import shown
from worker.playbook.command import plan_command
from worker.playbook.render import RenderedStep
from worker.playbook.spec import Playbook
from worker.playbook.templates import param_names, parse_template, render_plain

SPEC_SECRET_PARAMS = "secretParams"  # the names of the run's secret params
SPEC_PARAM_VALUES = "paramValues"  # the other params' values, for rendering again
STEP_TEMPLATE = "template"  # a step that uses a secret: its command and env as written
# The run's secret values, added to the spec a step task read, in its memory only.
RUN_SECRETS = "runSecrets"

Secrets = Mapping[str, str]


class MissingSecretError(CloudOpsError):
    """A step needs a secret param's value that its task was not given."""

    def __init__(self, names: list[str]) -> None:
        listed = ", ".join(shown(n) for n in names)
        super().__init__(
            f"secret param {listed} has no value here: a secret is never stored, and this run"
            " was started without it (it waited for a max_concurrent slot, or its step was"
            " queued by the reaper); run it again"
        )
        self.names = names


def shown_values(values: Mapping[str, str], names: list[str]) -> dict[str, str]:
    """The params' values as the record may show them: each secret as `***`."""
    return {k: MASK if k in names else v for k, v in values.items()}


def record_spec(
    playbook: Playbook, steps: list[dict[str, Any]], values: Mapping[str, str], names: list[str]
) -> dict[str, Any]:
    """The spec's part for secrets: each step using one gets its `template`; with no secret
    param, nothing (the spec is as it always was)."""
    if not names:
        return {"steps": steps}
    out: list[dict[str, Any]] = []
    for step, source in zip(steps, playbook.steps, strict=True):
        if _uses(source.command, dict(source.env)) & set(names):
            step = step | {STEP_TEMPLATE: {"command": source.command, "env": dict(source.env)}}
        out.append(step)
    return {
        "steps": out,
        SPEC_SECRET_PARAMS: names,
        SPEC_PARAM_VALUES: {k: v for k, v in values.items() if k not in names},
    }


def _uses(command: str, env: Mapping[str, str]) -> set[str]:
    used = set(param_names(parse_template(command)))
    for value in env.values():
        used |= set(param_names(parse_template(value)))
    return used


def step_of(spec: Mapping[str, Any], index: int) -> RenderedStep:
    """Step `index` of a run's spec as its process runs it: rendered again with the secrets
    the task holds (`RUN_SECRETS`); MissingSecretError when it holds not every one it uses."""
    data = spec["steps"][index]
    step = RenderedStep.from_dict(data)
    template = data.get(STEP_TEMPLATE)
    secrets: Secrets = spec.get(RUN_SECRETS) or {}
    if template is None:
        return replace(step, secrets=tuple(secrets.values()))
    used = _uses(template["command"], template["env"]) & set(spec.get(SPEC_SECRET_PARAMS) or [])
    missing = sorted(n for n in used if n not in secrets)
    if missing:
        raise MissingSecretError(missing)
    values = {**(spec.get(SPEC_PARAM_VALUES) or {}), **secrets}
    display, argv, script = plan_command(template["command"]).render(values)
    env = {k: render_plain(parse_template(v), values) for k, v in template["env"].items()}
    return replace(
        step,
        display_command=display,
        argv=argv,
        script=script,
        env=env,
        secrets=tuple(secrets.values()),
    )


def with_secrets(spec: Mapping[str, Any], secrets: Secrets | None) -> dict[str, Any]:
    """The spec a task read, with the secrets its arguments brought (never written back)."""
    return dict(spec) | {RUN_SECRETS: dict(secrets or {})}


def secrets_of(spec: Mapping[str, Any]) -> dict[str, str] | None:
    """What a task hands to the tasks it queues (None: nothing to hand)."""
    secrets = spec.get(RUN_SECRETS)
    return dict(secrets) if secrets else None


def rerun_secrets(spec: Mapping[str, Any], params: Mapping[str, object] | None) -> dict[str, str]:
    """A rerun's secrets: the old run's secret params given again in the rerun's `params`
    (nothing else may be: the other values are the old run's). ProblemsError (a 422) names
    each one missing and each other name."""
    names: list[str] = list(spec.get(SPEC_SECRET_PARAMS) or [])
    given = dict(params or {})
    problems = [
        Problem(
            ("params", n),
            f"secret param {shown(n)} is never stored: give it again"
            f' ("params": {{"{n}": ...}} in the rerun request, or --param {n}=VALUE)',
        )
        for n in names
        if not isinstance(given.get(n), str) or not given[n]
    ]
    problems += [
        Problem(
            ("params", str(k)),
            f"{shown(str(k))} is not a secret param of this run; a rerun takes only"
            f" those ({', '.join(names) or 'none'}), the other values are the old run's",
        )
        for k in given
        if k not in names
    ]
    if problems:
        raise ProblemsError(problems, field="params")
    return {n: str(given[n]) for n in names}
