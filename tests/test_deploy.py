"""docker-compose.yml, the Dockerfile and the systemd units agree with the CLI and settings:
what they run exists and takes those options, and every variable they use is defined."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from cli.main import cli
from events.settings import Settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
# Variables compose and the units use that are not Settings fields, and where they come from.
DEPLOY_ONLY = {
    "REDIS_PASSWORD",  # redis-server --requirepass
    "POSTGRES_PASSWORD",  # the postgres image's superuser password
    "FLOWER_BASIC_AUTH",  # flower --basic-auth
    "CLOUDOPS_WORKER_QUEUES",  # cloudops worker --queues
    "CLOUDOPS_WORKER_CONCURRENCY",  # cloudops worker --concurrency
    "CLOUDOPS_WORKER_NAME",  # cloudops worker --hostname
    "CLOUDOPS_RELAY_HOST",  # cloudops relay --host
    "CLOUDOPS_RELAY_PORT",  # cloudops relay --port
}
FLOWER_OPTIONS = {"--port", "--address", "--basic-auth", "--url-prefix", "--broker-api"}


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value
    return out


def substitute(text: str, env: dict[str, str]) -> str:
    """Expand compose/systemd variable references with the example env file's values."""

    def value(m: re.Match[str]) -> str:
        default = m.group(2)[2:] if m.group(2) else None
        found = env.get(m.group(1), default)
        assert found is not None, f"{m.group(1)} is used but not defined"
        return found

    return re.sub(r"\$\$?\{([A-Z_]+)(:-[^}]*)?\}", value, text)


COMPOSE_ENV = env_file(REPO / "deploy" / "cloudops.env.example")


def referenced(text: str) -> set[str]:
    return set(re.findall(r"\$\$?\{([A-Z_]+)", text))


def cloudops_argv(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    if service.get("entrypoint") == []:
        assert command[:2] == ["sh", "-c"], "a shell wrapper must be sh -c 'exec cloudops ...'"
        argv = shlex.split(substitute(command[2], COMPOSE_ENV))
        assert argv[0] == "exec", "exec, so the worker gets the signals itself"
        argv = argv[1:]
    else:
        argv = ["cloudops", *command]  # the image's ENTRYPOINT is cloudops
    assert argv[0] == "cloudops"
    return argv[1:]


def check_cli(argv: list[str]) -> None:
    group = typer.main.get_command(cli)
    assert isinstance(group, typer.core.TyperGroup)
    sub, *args = argv
    assert sub in group.commands, f"cloudops has no {sub!r} command"
    options = {opt for p in group.commands[sub].params for opt in p.opts}
    given = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    if sub == "flower":
        assert given <= FLOWER_OPTIONS, given - FLOWER_OPTIONS
    else:
        assert given <= options, f"cloudops {sub} takes no {given - options}"
    if sub != "flower":
        ctx = group.commands[sub].make_context(sub, list(args))  # parses, or raises
        assert ctx.params is not None


@pytest.mark.parametrize("name", ["relay", "worker", "scheduler", "flower", "migrate"])
def test_compose_service_runs_an_existing_cli_command(name: str) -> None:
    check_cli(cloudops_argv(COMPOSE["services"][name]))


def test_compose_environment_is_defined_and_known() -> None:
    example = env_file(REPO / "deploy" / "cloudops.env.example")
    known = set(Settings.env_names()) | DEPLOY_ONLY
    for key in example:
        assert key in known, f"{key} in cloudops.env.example is read by nothing"
    for name, service in COMPOSE["services"].items():
        text = yaml.safe_dump(service)
        for var in referenced(text):
            assert var in example or "${" + var + ":-" in text.replace("$${", "${"), (
                f"service {name} uses {var}, which the example env file does not define"
            )
        if name not in ("redis", "postgres"):
            assert service["env_file"] == "deploy/cloudops.env"
    redis_cmd = COMPOSE["services"]["redis"]["command"]
    assert "--requirepass" in redis_cmd and "noeviction" in redis_cmd and "appendonly" in redis_cmd
    assert "REDIS_PASSWORD" in example and ":change-me-redis@" in example["CLOUDOPS_REDIS_URL"]
    # The relay archives into PostgreSQL, started healthy and migrated before it.
    relay = COMPOSE["services"]["relay"]
    assert relay["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert relay["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert relay["environment"]["CLOUDOPS_DATABASE_URL"].startswith("postgresql+psycopg://")
    postgres = COMPOSE["services"]["postgres"]
    assert "pg_isready" in str(postgres["healthcheck"]["test"])
    assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"]


def test_every_service_has_a_healthcheck_and_flower_has_auth() -> None:
    for name, service in COMPOSE["services"].items():
        assert "healthcheck" in service, name
    assert "--basic-auth" in COMPOSE["services"]["flower"]["command"][2]


def test_dockerfile_copies_what_exists_and_runs_as_non_root() -> None:
    text = (REPO / "deploy" / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), f"Dockerfile copies missing {src}"
    assert 'ENTRYPOINT ["cloudops"]' in text
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert "awscli" in text


@pytest.mark.parametrize("unit", ["cloudops-worker.service", "cloudops-relay.service"])
def test_systemd_units_run_existing_commands_with_defined_variables(unit: str) -> None:
    text = (REPO / "deploy" / "systemd" / unit).read_text()
    exec_start = re.search(r"^ExecStart=(.+?)(?<!\\)$", text, re.M | re.S)
    assert exec_start
    env_name = re.search(r"^EnvironmentFile=/etc/cloudops/(\S+)$", text, re.M)
    assert env_name
    example = env_file(REPO / "deploy" / "systemd" / (env_name.group(1) + ".example"))
    argv = shlex.split(substitute(exec_start.group(1).replace("\\\n", " "), example))
    assert argv[0].endswith("/cloudops")
    check_cli(argv[1:])
    for var in referenced(exec_start.group(1)):
        assert var in example, f"{unit} uses {var}, not defined in {env_name.group(1)}.example"
    for key in example:
        assert key in set(Settings.env_names()) | DEPLOY_ONLY, key
    if "worker" in unit:
        assert "KillMode=mixed" in text  # only the main process gets SIGTERM: warm shutdown
