"""Where a problem of a playbook is (its YAML line, its step, its field, in one message), and
the collector of every problem of one playbook."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict, Unpack

import yaml
from pydantic import BaseModel

from events.wording import describe, shortened, shown
from worker.playbook.errors import PlaybookError, PlaybookProblem
from worker.playbook.spec import Path, Playbook, PlaybookOptions, Step


def _short(loc: Path) -> Path:
    """A location with its keys cut short, as messages show them: an answer is not a dump of
    the input."""
    return tuple(p if isinstance(p, int) else shortened(p) for p in loc)


def _path_text(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + shortened(part)
    return out


MAX_LISTED_PROBLEMS = 200


class Where(TypedDict, total=False):
    """Where a problem is, besides its path in the playbook."""

    at_key: bool  # at the key rather than its value (its line)
    field: str  # the request field at fault: `playbook` (default), or `params`
    line: int | None  # its line when known better than from the path (a YAML error's mark)
    loc: tuple[str | int, ...]  # its place in the request, default (`playbook`, *path)


class Locator:
    """Maps a path in the playbook to its YAML line, and builds located problems."""

    def __init__(self, source: str, root: yaml.Node | None, data: object) -> None:
        self.source = source
        self.root = root
        self.data = data

    def line(self, path: Path, *, at_key: bool = False) -> int | None:
        node = self.root
        if node is None:
            return None
        found: yaml.Node = node
        for n, part in enumerate(path):
            last = n == len(path) - 1
            child: yaml.Node | None = None
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                for key_node, value_node in node.value:
                    if isinstance(key_node, yaml.ScalarNode) and key_node.value == part:
                        child = key_node if last and at_key else value_node
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(part, int)
                and 0 <= part < len(node.value)
            ):
                child = node.value[part]
            if child is None:
                break
            node = found = child
        return int(found.start_mark.line) + 1

    def step_label(self, index: int) -> tuple[str, str | None]:
        """('step 2 (list)', 'list') for the step at index, from the raw data."""
        step_id: str | None = f"step_{index + 1}"
        steps = self.data.get("steps") if isinstance(self.data, Mapping) else None
        if isinstance(steps, list) and index < len(steps):
            raw = steps[index]
            if isinstance(raw, Mapping) and "id" in raw:
                raw_id = raw["id"]
                step_id = raw_id if isinstance(raw_id, str) and raw_id else None
        label = f"step {index + 1}" + (f" ({shortened(step_id)})" if step_id else "")
        return label, step_id

    def problem(self, path: Path, problem: str, **at: Unpack[Where]) -> PlaybookProblem:
        """The problem at `path` in the playbook, located."""
        field = at.get("field", "playbook")
        line = at.get("line")
        line = line if line is not None else self.line(path, at_key=at.get("at_key", False))
        where = [self.source]
        if line is not None:
            where.append(f"line {line}")
        step_number = step_id = None
        key_path = path
        if len(path) >= 2 and path[0] == "steps" and isinstance(path[1], int):
            label, step_id = self.step_label(path[1])
            step_number = path[1] + 1
            where.append(label)
            key_path = path[2:]
        key = _path_text(key_path) or None
        if key:
            where.append(f"field {key}")
        return PlaybookProblem(
            loc=_short(at.get("loc", ("playbook", *path))),
            msg=", ".join(where) + f": {problem}",
            source=self.source,
            problem=problem,
            field=field,
            line=line,
            step_number=step_number,
            step_id=step_id,
            key=key,
        )

    def error(self, path: Path, problem: str, *, line: int | None = None) -> PlaybookError:
        """A problem that stops the check there (the YAML does not parse, or is no mapping)."""
        return PlaybookError([self.problem(path, problem, line=line)])


class Problems:
    """Every problem of one playbook and its params, collected rather than raised at the first:
    in document order, the playbook's before the run's params', each once."""

    def __init__(self, locator: Locator) -> None:
        self.locator = locator
        self._found: list[tuple[tuple[bool, int, bool, int, int], PlaybookProblem]] = []
        self._seen: set[PlaybookProblem] = set()

    def add(self, path: Path, problem: str, *, late: bool = False, **at: Unpack[Where]) -> None:
        """Add a problem; `late` sorts it after the others of its mapping (a missing key: an
        unknown key beside it is often the same typo, and reads better first)."""
        found = self.locator.problem(path, problem, **at)
        own = found.line or 0
        parent = (self.locator.line(path[:-1]) or 0) if path else own
        step = path[1] if len(path) >= 2 and path[0] == "steps" and isinstance(path[1], int) else -1
        self._keep((found.field != "playbook", parent, late, own, step), found)

    def add_param(self, name: object, problem: str) -> None:
        """A problem of the run's params, not of a place in the playbook."""
        found = PlaybookProblem(
            loc=_short(("params", str(name))),
            msg=f"{self.locator.source}, params: {problem}",
            source=self.locator.source,
            problem=problem,
            field="params",
            key="params",
        )
        self._keep((True, 0, False, 0, -1), found)

    def _keep(self, order: tuple[bool, int, bool, int, int], found: PlaybookProblem) -> None:
        if found in self._seen:
            return  # one problem found twice (an option that every step inherits)
        self._seen.add(found)
        self._found.append((order, found))

    def add_pydantic(self, errors: Iterable[Mapping[str, Any]]) -> None:
        for err in errors:
            path, problem, at_key = pydantic_problem(err)
            self.add(path, problem, at_key=at_key, late=err["type"] == "missing")

    def raise_if_any(self) -> None:
        if not self._found:
            return
        ordered = [p for _, p in sorted(self._found, key=lambda entry: entry[0])]
        if len(ordered) > MAX_LISTED_PROBLEMS:
            # A 1 MB playbook can have a problem every few bytes: list a screenful, count the rest.
            rest = len(ordered) - MAX_LISTED_PROBLEMS
            ordered = ordered[:MAX_LISTED_PROBLEMS]
            ordered.append(self.locator.problem((), f"{rest} more problems, not listed"))
        raise PlaybookError(ordered)


def _model_for(path: Path) -> type[BaseModel] | None:
    if len(path) == 1:
        return Playbook
    if len(path) == 2 and path[0] == "options":
        return PlaybookOptions
    if len(path) == 3 and path[0] == "steps" and isinstance(path[1], int):
        return Step
    return None


def _unknown_key(path: Path) -> str:
    key = str(path[-1])
    model = _model_for(path)
    if model is None:
        return f"unknown key {shown(key)}"
    allowed = sorted(model.model_fields)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {shown(key)} (allowed: {', '.join(allowed)}){hint}"


def pydantic_problem(err: Mapping[str, Any]) -> tuple[Path, str, bool]:
    """(path, problem, at_key) for one pydantic error."""
    path: Path = tuple(err["loc"])
    kind = err["type"]
    at_key = False
    if path and path[-1] == "[key]":
        path, at_key = path[:-1], True
    if kind == "value_error":
        return path, str(err["msg"]).removeprefix("Value error, "), at_key
    if kind == "extra_forbidden":
        return path, _unknown_key(path), True
    if kind == "missing":
        what = "every step" if len(path) == 3 and path[0] == "steps" else "a playbook"
        return path, f"is missing ({what} needs `{path[-1]}`)", False
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return path, f"must be a mapping of keys to values, got {describe(err['input'])}", False
    if kind == "list_type":
        return path, f"must be a list, got {describe(err['input'])}", False
    return path, str(err["msg"]), at_key
