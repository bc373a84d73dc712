"""A step with the run's params put in: what a worker runs and what the events show."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from events.models import ExecutionOptions
from events.vocabulary import CommandType
from events.wording import shown
from worker.playbook.locate import Problems
from worker.playbook.params import render_locator, resolve_params
from worker.playbook.spec import Path, Playbook
from worker.playbook.templates import Template, parse_template, render_plain
from worker.playbook.validators import NO_BLANKS_RE, QUEUE_RE


@dataclass(frozen=True, slots=True)
class RenderedStep:
    """One step with the run's params put in: what a worker runs and what the events show."""

    step_id: str
    step_name: str
    step_number: int  # 1-based
    total_steps: int
    command_type: CommandType
    display_command: str  # the command with values as is, for events (masked by the worker)
    argv: tuple[str, ...] | None  # aws_cli: run without a shell
    script: str | None  # script: run with bash -c; values are quoted
    options: ExecutionOptions  # effective: the step's value, else the playbook's options
    env: Mapping[str, str]
    queue: str | None
    retries: int
    continue_on_error: bool
    # A fan-out step's targets with params put in (`{"queue": q}`, `{"hosts": [...]}` or
    # `{"labels": {...}}`), None for a step that runs once; see worker.playbook.fanout.
    targets: Mapping[str, Any] | None = None
    parallel: int | None = None
    max_failures: int | None = None
    # The values of the secret params this step uses, to mask in what it publishes: held by
    # the task that runs it only, never in its dict (the record's spec).
    secrets: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe form (the record's spec), without its secrets."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "secrets"} | {
            "argv": list(self.argv) if self.argv is not None else None,
            "options": self.options.model_dump(exclude_none=True),
            "env": dict(self.env),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RenderedStep:
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        argv = values["argv"]
        values["argv"] = tuple(argv) if argv is not None else None
        values["options"] = ExecutionOptions.model_validate(values["options"])
        values["env"] = dict(values["env"])
        return cls(**values)


def _render_word(
    problems: Problems,
    path: Path,
    text: str | None,
    values: Mapping[str, str],
    check: re.Pattern[str],
    what: str,
) -> str | None:
    """A templated one-word option (profile, region, queue) rendered and checked again."""
    if text is None:
        return None
    template: Template = parse_template(text)
    out = render_plain(template, values)
    if not check.match(out):
        problems.add(path, f"{shown(text)} gives {shown(out)}, which is not {what}", field="params")
    return out


def render_options(
    playbook: Playbook, params: Mapping[str, object] | None = None
) -> ExecutionOptions:
    """The playbook's `options` with params put in (for `execution_started`)."""
    return render_all(playbook, params)[0]


def _options(
    playbook: Playbook, index: int | None, values: Mapping[str, str], problems: Problems
) -> ExecutionOptions:
    step = playbook.steps[index] if index is not None else None
    opts = playbook.options

    def pick(key: str) -> tuple[Path, str | None]:
        own = getattr(step, key) if step is not None else None
        if own is not None and index is not None:
            return ("steps", index, key), own
        return ("options", key), getattr(opts, key)

    def word(key: str) -> str | None:
        return _render_word(problems, *pick(key), values, NO_BLANKS_RE, "one word")

    path, working_dir = pick("working_dir")
    wd = None
    if working_dir is not None:
        wd = render_plain(parse_template(working_dir), values)
        if not wd.strip():
            problems.add(path, f"{shown(working_dir)} gives an empty directory", field="params")
            wd = None
    timeout = step.timeout if step is not None and step.timeout is not None else opts.timeout
    return ExecutionOptions(
        working_dir=wd,
        timeout=timeout,
        aws_profile=word("aws_profile"),
        aws_region=word("aws_region"),
    )


def render_step(
    playbook: Playbook, index: int, params: Mapping[str, object] | None = None
) -> RenderedStep:
    """Step `index` (0-based) with the run's `params` (over the defaults) put in.

    Raises PlaybookError if params are missing or unknown (see resolve_params) or a value
    makes a field unusable, and IndexError for an index outside the steps.
    """
    if not 0 <= index < len(playbook.steps):
        raise IndexError(f"step index {index} outside 0..{len(playbook.steps) - 1}")
    problems = Problems(render_locator(playbook))
    step = _render(playbook, index, resolve_params(playbook, params), problems)
    problems.raise_if_any()
    return step


def _render(
    playbook: Playbook, index: int, values: Mapping[str, str], problems: Problems
) -> RenderedStep:
    step = playbook.steps[index]
    plan = step.plan()
    display, argv, script = plan.render(values)
    return RenderedStep(
        step_id=step.id,
        step_name=step.name,
        step_number=index + 1,
        total_steps=len(playbook.steps),
        command_type=plan.command_type,
        display_command=display,
        argv=argv,
        script=script,
        options=_options(playbook, index, values, problems),
        env={name: render_plain(parse_template(v), values) for name, v in step.env.items()},
        queue=_render_word(
            problems, ("steps", index, "queue"), step.queue, values, QUEUE_RE, "a queue name"
        ),
        retries=step.retries,
        continue_on_error=step.continue_on_error,
        targets=_render_targets(playbook, index, values, problems),
        parallel=step.parallel,
        max_failures=step.max_failures,
    )


def render_all(
    playbook: Playbook, params: Mapping[str, object] | None = None
) -> tuple[ExecutionOptions, list[RenderedStep]]:
    """The options and every step rendered (see render_step); PlaybookError lists every field
    that the values make unusable, in every step."""
    return render_values(playbook, resolve_params(playbook, params))


def render_values(
    playbook: Playbook, values: Mapping[str, str]
) -> tuple[ExecutionOptions, list[RenderedStep]]:
    """render_all with the params' values resolved already."""
    problems = Problems(render_locator(playbook))
    options = _options(playbook, None, values, problems)
    steps = [_render(playbook, i, values, problems) for i in range(len(playbook.steps))]
    problems.raise_if_any()
    return options, steps


def _render_targets(
    playbook: Playbook, index: int, values: Mapping[str, str], problems: Problems
) -> dict[str, Any] | None:
    targets = playbook.steps[index].targets
    if targets is None:
        return None
    rendered: dict[str, Any] = {}
    for path, text in targets.templated():
        where: Path = ("steps", index, "targets", *path)
        check, what = (
            (QUEUE_RE, "a queue name") if path[0] != "labels" else (NO_BLANKS_RE, "one word")
        )
        out = _render_word(problems, where, text, values, check, what)
        if path[0] == "queue":
            rendered["queue"] = out
        elif path[0] == "hosts":
            rendered.setdefault("hosts", []).append(out)
        else:
            rendered.setdefault("labels", {})[path[1]] = out
    return rendered


def render_playbook(
    playbook: Playbook, params: Mapping[str, object] | None = None
) -> list[RenderedStep]:
    """Every step rendered (see render_all)."""
    return render_all(playbook, params)[1]
