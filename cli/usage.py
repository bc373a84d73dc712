"""What every `cloudops` command does on bad usage or bad input: one line on stderr, exit 2."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import typer

from cli.render import EXIT_USAGE
from events.errors import CloudOpsError, Problem
from events.settings import Settings


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    sys.stderr.write(f"cloudops: error: {message}\n")
    return typer.Exit(code)


def fail_each(problems: Sequence[Problem]) -> typer.Exit:
    """Bad input with several problems (a playbook): one line each, then exit 2."""
    for problem in problems:
        sys.stderr.write(f"cloudops: error: {' '.join(problem.msg.splitlines())}\n")
    return typer.Exit(EXIT_USAGE)


def settings_or_fail() -> Settings:
    try:
        return Settings.from_env()
    except CloudOpsError as e:
        raise fail(str(e)) from e
