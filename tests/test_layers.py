"""The layout is the architecture (ARCHITECTURE.md): each package imports only what it may.

- `events/` (the contract and the bus) knows nothing of Celery or HTTP;
- `worker/` (running commands) knows nothing of HTTP;
- `api/` (the relay) never imports `worker/`: it gets a Dispatcher injected;
- only `cli/`, the composition root, wires them together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from events.scripts import names_used, resource, script
from events.vocabulary import Outcome, RecordField, Status
from tests.helpers import REPO

HTTP = {"fastapi", "starlette", "uvicorn", "httpx", "websockets", "typer"}
CELERY = {"celery", "kombu", "billiard", "flower"}
RULES: dict[str, set[str]] = {
    "events": CELERY | HTTP | {"worker", "api", "cli", "fakeredis"},
    "worker": HTTP | {"api", "cli"},
    "api": CELERY | {"worker", "cli"},
}
MAX_MODULE_LINES = 450


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def crossings(package: str, banned: set[str]) -> list[str]:
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        for line, module in imports_of(path):
            if module.split(".")[0] in banned:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    return bad


@pytest.mark.parametrize("package", sorted(RULES))
def test_packages_import_only_what_their_layer_may(package: str) -> None:
    assert crossings(package, RULES[package]) == []


def test_the_check_sees_a_crossing(tmp_path: Path) -> None:
    """The checker itself: a module that imports across a line is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom worker.runtime import Runtime\nimport celery.app\n")
    assert [m for _, m in imports_of(bad)] == ["os", "worker.runtime", "celery.app"]


def test_no_module_outside_tests_is_over_the_size_limit() -> None:
    big = []
    for package in ("events", "worker", "api", "cli"):
        for path in (REPO / package).rglob("*.py"):
            lines = len(path.read_text().splitlines())
            if lines > MAX_MODULE_LINES:
                big.append(f"{path.relative_to(REPO)} ({lines} lines)")
    assert big == []


def test_lua_names_every_field_and_status_from_the_vocabulary() -> None:
    tables = {"F": RecordField, "S": Status, "R": Outcome}
    for path in sorted((REPO / "events" / "lua").glob("*.lua")):
        for table, name in names_used(resource(path.stem)):
            assert name in tables[table].__members__, f"{path.name}: {table}.{name}"
    assert "local F = {" in script("claim") and "local function decide" in script("publish")
