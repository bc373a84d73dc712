"""Turn a submitted command into what the executor runs: argv, environment, options."""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping

from events.errors import InvalidRequestError
from events.models import ExecutionOptions
from events.vocabulary import COMMAND_TYPES, CommandType
from worker.executor import CommandSpec

MAX_COMMAND_CHARS = 128 * 1024


def command_type_named(command_type: str) -> CommandType:
    """The command type a request names; InvalidRequestError unless aws_cli or script."""
    if command_type not in COMMAND_TYPES:
        raise InvalidRequestError(
            "commandType", f"must be one of {', '.join(COMMAND_TYPES)}, got {command_type!r}"
        )
    return CommandType(command_type)


def validate_command(command: str, command_type: str) -> list[str] | None:
    """Check a submitted command; return the argv of an aws_cli command, None for a script."""
    kind = command_type_named(command_type)
    if not command.strip():
        raise InvalidRequestError("command", "must not be empty")
    if len(command) > MAX_COMMAND_CHARS:
        raise InvalidRequestError("command", f"longer than {MAX_COMMAND_CHARS} characters")
    if "\x00" in command:
        raise InvalidRequestError("command", "must not contain NUL characters")
    if kind is CommandType.SCRIPT:
        return None
    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise InvalidRequestError("command", f"cannot be parsed as arguments: {e}") from e
    if not argv or argv[0] != "aws":
        raise InvalidRequestError("command", "an aws_cli command must start with 'aws'")
    return argv


def script_argv(script: str) -> list[str]:
    """bash runs the script; `--` so that a script starting with '-' is not read as options."""
    return ["bash", "-c", "--", script]


def build_env(
    base: Mapping[str, str], options: ExecutionOptions, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = dict(base)
    env.update(extra or {})
    if options.aws_profile:
        env["AWS_PROFILE"] = options.aws_profile
    if options.aws_region:
        env["AWS_REGION"] = options.aws_region
        env["AWS_DEFAULT_REGION"] = options.aws_region
    # The AWS CLI pages through `less` on a TTY; there is none here, and a pager must never
    # wait for input.
    env.setdefault("AWS_PAGER", "")
    # Worker-internal settings (tokens, Redis URLs with passwords) are not the command's.
    for name in list(env):
        if name.startswith("CLOUDOPS_") and name != "CLOUDOPS_EXECUTION_ID":
            del env[name]
    return env


def command_spec(
    command: str,
    command_type: str,
    options: ExecutionOptions,
    *,
    argv: list[str] | None = None,
    env: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
) -> CommandSpec:
    """The executor's spec. `argv` overrides parsing (playbooks substitute params per argument)."""
    if argv is None:
        parsed = validate_command(command, command_type)
        # `--`: a script that starts with `-` (`-x`, `--json`) is the script, not bash's option.
        argv = parsed if parsed is not None else script_argv(command)
    return CommandSpec(
        argv=argv,
        env=build_env(os.environ if base_env is None else base_env, options, env),
        working_dir=options.working_dir,
        timeout_s=options.timeout,
    )
