"""`load_playbook`: the one way in. Parse YAML (or take a parsed object), check everything
that can be checked before anything runs, including the run's params, and raise PlaybookError
listing every problem, each naming the source, the line, the step and the field."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import yaml
from pydantic import ValidationError

from events.requests import REQUEST_SOURCE
from events.wording import describe
from worker.playbook.locate import Locator, Problems
from worker.playbook.params import check_params
from worker.playbook.spec import DEFAULT_NAME, Path, Playbook, duplicate_step_ids
from worker.playbook.validators import MAX_PLAYBOOK_CHARS


def _parse_yaml(text: str, locator: Locator) -> tuple[yaml.Node | None, object]:
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as e:
        # The reader refuses unprintable characters (a C1 control) before any parsing.
        raise locator.error((), f"YAML syntax error: {str(e).splitlines()[0]}") from e
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = int(mark.line) + 1 if mark is not None else None
        problem = " ".join(p for p in (e.context, e.problem) if p) or "invalid YAML"
        lines = text.splitlines()
        if line is not None and line <= len(lines) and "{{" in lines[line - 1]:
            problem += " (a value that starts with '{{' must be quoted in YAML)"
        raise locator.error((), f"YAML syntax error: {problem}", line=line) from e
    except yaml.YAMLError as e:
        raise locator.error((), f"YAML syntax error: {e}") from e
    except RecursionError:
        # PyYAML composes and constructs recursively: a document nested thousands deep
        # exhausts Python's stack. Bad input, refused like any other (never a 500).
        raise locator.error((), NESTED_TOO_DEEPLY) from None
    finally:
        loader.dispose()
    return node, data


_MERGE_TAG = "tag:yaml.org,2002:merge"
NESTED_TOO_DEEPLY = "is nested too deeply (lists or mappings inside each other past Python's limit)"


def _check_duplicate_keys(root: yaml.Node, problems: Problems) -> None:
    """YAML keeps the last of two equal keys silently; a playbook with one is refused."""
    seen_nodes: set[int] = set()
    todo: list[tuple[yaml.Node, Path]] = [(root, ())]
    while todo:
        node, path = todo.pop()
        if id(node) in seen_nodes:
            continue  # an alias: already checked (and not walked twice)
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: dict[str, int] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                    continue
                key, line = str(key_node.value), int(key_node.start_mark.line) + 1
                if key in keys:
                    problems.add(
                        (*path, key),
                        f"key {key!r} appears twice in one mapping (lines {keys[key]} and {line})",
                        line=line,
                    )
                keys[key] = line
                todo.append((value_node, (*path, key)))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend((child, (*path, i)) for i, child in enumerate(node.value))


def default_name(source_name: str) -> str:
    """A playbook without `name` is named after its file, or `playbook` from a request body."""
    if source_name == REQUEST_SOURCE:
        return DEFAULT_NAME
    return PurePath(source_name).stem or DEFAULT_NAME


def load_playbook(
    source: str | Mapping[str, Any],
    *,
    source_name: str = REQUEST_SOURCE,
    params: Mapping[str, object] | None = None,
    for_saving: bool = False,
) -> Playbook:
    """Parse and check a playbook (YAML text or a parsed object), and the run's `params`.

    Raises PlaybookError listing every problem, each naming source_name, the line (for YAML
    text), the step and the field: bad YAML (which stops the check there), duplicate keys,
    unknown keys, a missing or empty command, duplicate step ids, an empty step list, bad
    timeouts or retries, malformed templates, a param that is used but has neither a default
    nor a value in `params`, or a value in `params` for a param the playbook does not know.
    `for_saving` (CONTRACT §10): the run's params are not known yet, so they are not checked.
    """
    try:
        return _load(source, source_name, params, for_saving)
    except RecursionError:
        raise Locator(source_name, None, None).error((), NESTED_TOO_DEEPLY) from None


def _parsed(source: str | Mapping[str, Any], source_name: str) -> tuple[Problems, object]:
    """The data of a playbook and the problems found parsing it (duplicate keys); raises
    PlaybookError for what stops the check (too large, not YAML)."""
    locator = Locator(source_name, None, source)
    if not isinstance(source, str):
        return Problems(locator), source
    if len(source) > MAX_PLAYBOOK_CHARS:
        raise locator.error((), f"is larger than {MAX_PLAYBOOK_CHARS} characters")
    node, data = _parse_yaml(source, locator)
    problems = Problems(Locator(source_name, node, data))
    if node is not None:
        _check_duplicate_keys(node, problems)
    return problems, data


def check_for_saving(text: str, source_name: str) -> None:
    """A playbook about to be saved (CONTRACT §10): PlaybookError as a run would raise it,
    except for params, which only its runs give."""
    load_playbook(text, source_name=source_name, for_saving=True)


def _load(
    source: str | Mapping[str, Any],
    source_name: str,
    params: Mapping[str, object] | None,
    for_saving: bool = False,
) -> Playbook:
    problems, data = _parsed(source, source_name)
    locator = problems.locator
    if data is None:
        raise locator.error((), "is empty: a playbook needs at least `steps`")
    if not isinstance(data, Mapping):
        raise locator.error((), f"must be a mapping with `steps` at the top, got {describe(data)}")
    data = {"name": default_name(source_name), **data}
    playbook: Playbook | None = None
    try:
        playbook = Playbook.model_validate(data)
    except ValidationError as e:
        problems.add_pydantic(e.errors())
    for index, problem in duplicate_step_ids(data.get("steps")):
        problems.add(("steps", index, "id"), problem)
    check_params(problems, data, params, values=not for_saving)
    problems.raise_if_any()
    assert playbook is not None  # the model refused nothing, or a problem was raised
    playbook._source = source_name
    return playbook
