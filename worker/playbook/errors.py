"""The one error of the playbook subsystem: a refused playbook or params, every problem located."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from events.errors import Problem, ProblemsError


@dataclass(frozen=True, slots=True)
class PlaybookProblem(Problem):
    """One problem of a playbook or its params: `msg` is the located line (`deploy.yml, line 5,
    step 2 (list), field timeout: ...`), the other fields carry the same facts as data.

    `field` is the request field at fault (`playbook`, or `params` for the run's params); `loc`
    starts with it, then the path in the playbook (`steps`, 1, `timeout`) or the param's name.
    """

    source: str = "<request>"
    problem: str = ""
    field: str = "playbook"
    line: int | None = None
    step_number: int | None = None
    step_id: str | None = None
    key: str | None = None


class PlaybookError(ProblemsError):
    """A playbook or its params are refused; `located` lists every problem, in document order.

    The attributes of the first problem are the error's own (`source`, `line`, `step_number`,
    `step_id`, `key`, `problem`), and `more` counts the others.
    """

    def __init__(self, problems: Sequence[PlaybookProblem]) -> None:
        super().__init__(problems, field=problems[0].field if problems else None)
        self.located = tuple(problems)
        first = self.located[0]
        self.source = first.source
        self.line = first.line
        self.step_number = first.step_number
        self.step_id = first.step_id
        self.key = first.key
        self.problem = first.problem or first.msg
        self.more = len(self.located) - 1
