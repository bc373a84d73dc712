"""`cloudops playbook push|ls|show`: saved playbooks (CONTRACT §10), through the relay with
`--remote` (or CLOUDOPS_API_URL), else in this process's history database."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from cli.options import JsonRows, Remote, add_listing, on_session
from cli.usage import fail as _fail
from events.db.playbooks import NAME_RE

playbook_cli = typer.Typer(
    help="Saved playbooks: push a version, list, show.", no_args_is_help=True
)


def default_name(path: Path, text: str) -> str:
    """The playbook's own `name` when it can be a saved name, else the file's stem."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        doc = None  # the save says what is wrong with it
    name = doc.get("name") if isinstance(doc, dict) else None
    if isinstance(name, str) and NAME_RE.fullmatch(name):
        return name
    return path.stem


@playbook_cli.command("push")
def push(
    file: Annotated[Path, typer.Argument(help="the playbook's YAML")],
    name: Annotated[
        str | None, typer.Option("--name", help="default: its name, or the stem")
    ] = None,
    remote: Remote = None,
) -> None:
    """Save FILE as the next version of a saved playbook (checked first, as a run would)."""
    try:
        text = file.read_text()
    except OSError as e:
        raise _fail(f"cannot read playbook {file}: {e.strerror}") from e
    saved_as = name or default_name(file, text)
    saved, created = on_session(remote, lambda s: s.save_playbook(saved_as, text))
    what = "saved" if created else "unchanged, still"
    sys.stderr.write(f"[cloudops] {what} {saved['name']} version {saved['version']}\n")
    sys.stdout.write(f"{saved['name']} {saved['version']}\n")


def _playbook_line(row: dict[str, Any]) -> str:
    return f"{row['name']:<32}  v{row['version']:<5}  {row['updatedAt']}"


add_listing(
    playbook_cli,
    lambda s: s.playbooks(),
    _playbook_line,
    "List saved playbooks: name, latest version, when it was saved.",
)


@playbook_cli.command("show")
def show(
    name: str,
    version: Annotated[int | None, typer.Option("--version", min=1)] = None,
    as_json: JsonRows = False,
    remote: Remote = None,
) -> None:
    """Print a saved playbook's YAML (the latest version, or --version); versions on stderr."""
    saved: dict[str, Any] = on_session(remote, lambda s: s.playbook(name, version))
    if as_json:
        sys.stdout.write(json.dumps(saved) + "\n")
        return
    versions = ", ".join(str(v["version"]) for v in saved["versions"])
    sys.stderr.write(
        f"[cloudops] {saved['name']} version {saved['version']} (versions: {versions})\n"
    )
    sys.stdout.write(saved["yaml"] if saved["yaml"].endswith("\n") else saved["yaml"] + "\n")
