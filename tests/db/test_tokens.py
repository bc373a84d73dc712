"""Named API tokens (issue 16 item 1) on real relays and a real PostgreSQL database.

Created through one relay, a token works on a second; revoked on the first, the second refuses
it within 5 s; a 2-second token is refused once it expired; CLOUDOPS_API_TOKENS are admins
`env-1`, `env-2`; only admins manage tokens (403 naming the role); bad input is a 422 naming the
field; `cloudops token create|ls|revoke` works straight on the database and through a relay;
without a database only the env tokens exist (503 naming it). And no secret reaches the
database in clear or a relay's log."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from events.db.schema import api_tokens
from events.settings import Settings
from tests.db.pg import PG_ADMIN_URL, empty_tables
from tests.helpers import run_cloudops, venv_path_env, wait_until
from tests.relay.helpers import RelayProcess, start_relay

pytestmark = pytest.mark.integration

ENV_TOKENS = ("tok-env-one-" + os.urandom(8).hex(), "tok-env-two-" + os.urandom(8).hex())


@pytest.fixture
def relays(settings: Settings, tmp_path: Path, pg_url: str) -> Iterator[list[RelayProcess]]:
    """Two relays on one Redis and one database, as a fleet's relays are; no token yet."""
    empty_tables(pg_url, api_tokens)
    env = {"CLOUDOPS_DATABASE_URL": pg_url}
    started = [
        start_relay(settings, tmp_path / f"relay{i}.log", tokens=ENV_TOKENS, env=env)
        for i in range(2)
    ]
    yield started
    for relay in started:
        relay.stop()


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _create(api: httpx.Client, **body: Any) -> dict[str, Any]:
    resp = api.post("/api/tokens", json=body)
    assert resp.status_code == 201, resp.text
    assert resp.headers["Cache-Control"] == "no-store"
    created: dict[str, Any] = resp.json()
    return created


def _status(relay: RelayProcess, secret: str, path: str = "/api/executions") -> int:
    return httpx.get(relay.base_url + path, headers=_bearer(secret), timeout=10).status_code


def test_env_tokens_are_admins_named_env_n(relays: list[RelayProcess]) -> None:
    for i, tok in enumerate(ENV_TOKENS, 1):
        who = httpx.get(relays[0].base_url + "/api/whoami", headers=_bearer(tok), timeout=10)
        assert who.json() == {"name": f"env-{i}", "role": "admin"}


def test_created_on_one_relay_revoked_there_refused_on_the_other_within_5s(
    relays: list[RelayProcess],
) -> None:
    a, b = relays
    with a.client() as api:
        created = _create(api, name="ops-team", role="operator", queues=["web", "db"])
        secret = created["secret"]
        assert secret.startswith("cot_") and len(secret) >= 40
        assert created["name"] == "ops-team" and created["role"] == "operator"
        assert created["queues"] == ["db", "web"] and created["createdBy"] == "env-1"
        listed = api.get("/api/tokens").json()
        assert [t["name"] for t in listed] == ["ops-team"]
        assert "secret" not in listed[0] and secret not in str(listed)
    who = httpx.get(b.base_url + "/api/whoami", headers=_bearer(secret), timeout=10).json()
    assert who == {"name": "ops-team", "role": "operator", "queues": ["db", "web"]}
    assert _status(b, secret) == 200
    # Not an admin: tokens are not its business, and the 403 names the role it lacks.
    refused = httpx.post(
        b.base_url + "/api/tokens", json={"name": "x", "role": "admin"}, headers=_bearer(secret)
    )
    assert refused.status_code == 403 and "admin role" in refused.json()["detail"]

    with a.client() as api:
        assert api.delete("/api/tokens/ops-team").status_code == 204
        revoked_at = time.monotonic()
        assert api.delete("/api/tokens/ops-team").status_code == 404
        assert api.get("/api/tokens").json()[0]["revokedAt"] is not None
    assert _status(a, secret) == 401  # the relay that revoked it: at once
    wait_until(lambda: _status(b, secret) == 401, timeout_s=5, what="the other relay refuses")
    took = time.monotonic() - revoked_at
    assert took < 5, took
    resp = httpx.get(b.base_url + "/api/executions", headers=_bearer(secret), timeout=10)
    assert resp.json() == {"detail": "invalid, revoked or expired token"}
    assert secret not in resp.text


def test_a_two_second_token_is_refused_once_it_expired(relays: list[RelayProcess]) -> None:
    with relays[0].client() as api:
        created = _create(api, name="short", role="viewer", expiresInS=2)
    secret = created["secret"]
    assert _status(relays[1], secret) == 200
    wait_until(lambda: _status(relays[1], secret) == 401, timeout_s=4, what="expired")
    assert _status(relays[0], secret) == 401


def test_bad_input_names_the_field(relays: list[RelayProcess]) -> None:
    with relays[0].client() as api:
        _create(api, name="taken", role="viewer")
        cases = [
            ({"name": "taken", "role": "viewer"}, "name: a token named 'taken' exists already"),
            ({"name": "a b", "role": "viewer"}, "name: must be"),
            ({"name": "ok", "role": "root"}, "role: must be one of"),
            ({"name": "ok", "role": "viewer", "queues": []}, "queues: must name at least one"),
            (
                {"name": "ok", "role": "viewer", "expiresInS": 0},
                "expiresInS: must be a positive integer",
            ),
            ({"name": "ok", "role": "viewer", "expiresInS": 10**26}, "expiresInS: must be at most"),
            ({"name": "env-1", "role": "viewer"}, "name: 'env-1' is the name of a CLOUDOPS_API"),
            ({"name": "ok", "role": "viewer", "secret": "mine"}, "secret: unknown field"),
        ]
        for body, detail in cases:
            resp = api.post("/api/tokens", json=body)
            assert resp.status_code == 422, (body, resp.text)
            assert resp.json()["detail"].startswith(detail), (body, resp.text)
        assert [t["name"] for t in api.get("/api/tokens").json()] == ["taken"]


def test_cli_token_create_ls_revoke_on_the_database_and_through_a_relay(
    relays: list[RelayProcess], pg_url: str, settings: Settings
) -> None:
    env = venv_path_env({k: v for k, v in os.environ.items() if not k.startswith("CLOUDOPS_")})
    env["CLOUDOPS_REDIS_URL"] = str(settings.redis_url)
    env["CLOUDOPS_KEY_PREFIX"] = settings.key_prefix
    local = {**env, "CLOUDOPS_DATABASE_URL": pg_url}
    made = run_cloudops("token", "create", "deployer", "--role", "operator", "--queues",
                        "web", "--expires", "30d", env=local)  # fmt: skip
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("cot_") and "shown once" in made.stderr
    assert _status(relays[0], secret) == 200

    remote = {**env, "CLOUDOPS_API_URL": relays[1].base_url, "CLOUDOPS_API_TOKEN": ENV_TOKENS[1]}
    listed = run_cloudops("token", "ls", "--json", env=remote)
    assert listed.returncode == 0, listed.stderr
    assert '"name": "deployer"' in listed.stdout and secret not in listed.stdout
    text = run_cloudops("token", "ls", env=local)
    assert text.stdout.split()[:3] == ["deployer", "operator", "web"], text.stdout
    # An operator may not manage tokens: one line, exit 2.
    as_op = run_cloudops("token", "ls", env={**remote, "CLOUDOPS_API_TOKEN": secret})
    assert as_op.returncode == 2 and "403" in as_op.stderr and "admin role" in as_op.stderr
    bad = run_cloudops("token", "create", "x", "--role", "viewer", "--expires", "soon", env=local)
    assert bad.returncode == 2 and bad.stderr.startswith("cloudops: error: --expires")
    assert run_cloudops("token", "revoke", "deployer", env=remote).returncode == 0
    again = run_cloudops("token", "revoke", "deployer", env=local)
    assert again.returncode == 2 and "unknown API token: 'deployer'" in again.stderr
    wait_until(lambda: _status(relays[0], secret) == 401, timeout_s=5, what="revoked")


def test_no_secret_in_the_database_or_the_logs(relays: list[RelayProcess], pg_url: str) -> None:
    secrets = []
    with relays[0].client() as api:
        for i, role in enumerate(("viewer", "operator", "admin")):
            secrets.append(_create(api, name=f"t{i}", role=role)["secret"])
        for s in secrets:
            assert _status(relays[1], s) == 200
            httpx.get(relays[0].base_url + "/api/executions", params={"token": s}, timeout=10)
        api.delete("/api/tokens/t0")
    for s in secrets:
        _status(relays[0], s)
    dump = _pg_dump(pg_url)
    assert "api_tokens" in dump and "t2" in dump  # the dump is of the right database
    for relay in relays:
        relay.stop()
    logs = "".join(r.logs() for r in relays)
    assert "/api/tokens" in logs  # the access log was captured
    for s in [*secrets, *ENV_TOKENS]:
        assert s not in dump and s not in logs


def _pg_dump(url: str) -> str:
    target = httpx.URL(url.replace("postgresql+psycopg://", "postgresql://"))
    admin = httpx.URL(PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://"))
    argv = ["pg_dump", "--no-owner", "-h", admin.host, "-p", str(admin.port or 5432)]
    argv += ["-U", admin.username or "postgres", target.path.lstrip("/")]
    return subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout


def test_without_a_database_only_env_tokens_exist(settings: Settings, tmp_path: Path) -> None:
    relay = start_relay(settings, tmp_path / "nodb.log", tokens=ENV_TOKENS)
    try:
        with relay.client() as api:
            resp = api.post("/api/tokens", json={"name": "x", "role": "viewer"})
            assert resp.status_code == 503
            assert resp.json()["detail"] == (
                "API tokens need the history database: CLOUDOPS_DATABASE_URL is not set"
            )
            assert api.get("/api/executions").status_code == 200
        assert _status(relay, "cot_" + "x" * 43) == 401
    finally:
        relay.stop()
