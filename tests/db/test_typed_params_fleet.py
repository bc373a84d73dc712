"""Typed params on a real fleet (issue 17 item 2): a relay, a worker, Redis and PostgreSQL.

Each param type's failure (missing, wrong type, out of range, not a choice, not matching the
pattern) is a 422 naming the param with nothing created, and exit 2 with a line per problem
from the CLI; defaults are applied; a secret echoed by a step is `***` in SSE, the output
route, the record, Redis, a pg_dump of the database and the worker's and relay's logs; a rerun
asks for it again."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from events.db.engine import make_engine
from events.db.schema import executions
from tests.db.fleet import TOKEN, Fleet, put_playbook, see
from tests.helpers import run_cloudops, wait_until, worker_env

pytestmark = pytest.mark.integration

SECRET = "hunter2-" + uuid.uuid4().hex
TYPED = """\
name: typed
params:
  region: {type: choice, choices: [eu-west-1, us-east-1], default: eu-west-1}
  keep: {type: int, min: 1, max: 30, required: true}
  dry_run: {type: bool, default: true}
  tag: {type: string, pattern: '[a-z]+', default: abc}
  api_key: {type: secret, required: true}
steps:
  - id: show
    command: >-
      echo "region={{ params.region }} keep={{ params.keep }} dry={{ params.dry_run }}
      tag={{ params.tag }} key={{ params.api_key }}"; echo "env=$KEY" >&2
    env: {KEY: "{{ params.api_key }}"}
  - id: again
    command: echo "second {{ params.api_key }}"
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("typed-params"), pg_url)
    # DEBUG: the secret must stay out of the worker's log at its most talkative too (Celery
    # prints a task's arguments at DEBUG).
    f.start(concurrency=2, loglevel="DEBUG")
    yield f
    f.stop()


@pytest.fixture(scope="module")
def api(fleet: Fleet) -> Iterator[httpx.Client]:
    with fleet.api() as client:
        saved = put_playbook(client, "typed", TYPED)
        assert saved.status_code == 201, saved.text
        yield client


def _created(fleet: Fleet) -> tuple[int, int]:
    """Records in Redis and rows in the database: what a refused run must not add to."""
    client = fleet.client()
    try:
        match = f"{fleet.prefix}:ex:*:record"
        records = sum(1 for _ in client.scan_iter(match=match, count=1000))
    finally:
        client.close()
    engine = make_engine(fleet.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(func.count()).select_from(executions)).scalar_one()
    finally:
        engine.dispose()
    return records, int(rows)


def _ended(api: httpx.Client, execution_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any]:
        rec: dict[str, Any] = api.get(f"/api/executions/{execution_id}").json()
        return rec if rec["status"] not in ("queued", "running") else {}

    return wait_until(done, timeout_s=30, what=f"{execution_id} ends")


GOOD = {"keep": 7, "api_key": SECRET}


@pytest.mark.parametrize(
    ("params", "name", "says"),
    [
        ({"api_key": SECRET}, "keep", "param 'keep' is required"),
        ({"keep": 3}, "api_key", "param 'api_key' is required"),
        (GOOD | {"keep": "seven"}, "keep", "must be a whole number, got the string 'seven'"),
        (GOOD | {"keep": 31}, "keep", "must be from 1 to 30, got 31"),
        (GOOD | {"region": "mars"}, "region", "must be one of eu-west-1, us-east-1"),
        (GOOD | {"tag": "ABC"}, "tag", "must match the pattern '[a-z]+', got 'ABC'"),
        (GOOD | {"dry_run": "maybe"}, "dry_run", "must be true or false"),
    ],
)
def test_each_bad_param_is_a_422_naming_it_and_nothing_is_created(
    api: httpx.Client, fleet: Fleet, params: dict[str, Any], name: str, says: str
) -> None:
    before = _created(fleet)
    body = {"playbookName": "typed", "params": params}
    resp = api.post("/api/executions", json=body)
    assert resp.status_code == 422, resp.text
    detail = resp.json()["detail"]
    assert [d["loc"] for d in detail] == [["body", "params", name]], detail
    assert says in detail[0]["msg"] and SECRET not in resp.text
    assert _created(fleet) == before


def test_every_problem_at_once_and_the_cli_prints_a_line_each(
    api: httpx.Client, fleet: Fleet
) -> None:
    before = _created(fleet)
    bad = {"keep": 0, "region": "x", "tag": "1", "dry_run": "2", "api_key": SECRET}
    resp = api.post("/api/executions", json={"playbookName": "typed", "params": bad})
    assert resp.status_code == 422, resp.text
    assert [d["loc"][-1] for d in resp.json()["detail"]] == ["keep", "region", "tag", "dry_run"]
    assert fleet.relay is not None
    env = _cli_env(fleet)
    args = [f"--param={k}={v}" for k, v in bad.items()]
    ran = run_cloudops("run", "--playbook-name", "typed", *args, env=env)
    assert ran.returncode == 2 and ran.stdout == ""
    lines = ran.stderr.splitlines()
    assert len(lines) == 4 and "keep" in lines[0] and "dry_run" in lines[3], ran.stderr
    assert SECRET not in ran.stderr
    assert _created(fleet) == before


def _cli_env(fleet: Fleet) -> dict[str, str]:
    assert fleet.relay is not None
    return {
        **worker_env(fleet.settings),
        "CLOUDOPS_API_URL": fleet.relay.base_url,
        "CLOUDOPS_API_TOKEN": TOKEN,
    }


def test_a_bad_declaration_is_refused_when_saved(api: httpx.Client) -> None:
    text = (
        "params:\n  a: {type: float}\n  b: {type: int, min: 5, max: 3}\n"
        "  c: {type: choice, choices: [x], default: y}\n"
        "steps:\n  - command: echo hi\n"
    )
    resp = put_playbook(api, "bad-decl", text)
    assert resp.status_code == 422, resp.text
    locs = [d["loc"][-1] for d in resp.json()["detail"]]
    assert locs == ["a", "b", "c"]
    assert api.get("/api/playbooks/bad-decl").status_code == 404


def test_the_saved_playbook_shows_its_declarations(api: httpx.Client) -> None:
    params = api.get("/api/playbooks/typed").json()["params"]
    assert [(p["name"], p["type"], p["required"]) for p in params] == [
        ("region", "choice", False),
        ("keep", "int", True),
        ("dry_run", "bool", False),
        ("tag", "string", False),
        ("api_key", "secret", True),
    ]
    assert params[0]["choices"] == ["eu-west-1", "us-east-1"] and params[1]["max"] == 30


def _pg_dump(url: str) -> str:
    engine = make_engine(url)
    u = engine.url
    engine.dispose()
    cmd = ["pg_dump", "--no-owner", "-h", u.host or "127.0.0.1", "-p", str(u.port or 5432)]
    cmd += ["-U", u.username or "postgres", u.database or ""]
    env = {"PGPASSWORD": u.password or "", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def test_defaults_apply_and_a_secret_is_masked_everywhere_and_never_stored(
    api: httpx.Client, fleet: Fleet
) -> None:
    resp = api.post("/api/executions", json={"playbookName": "typed", "params": GOOD})
    assert resp.status_code == 202, resp.text
    execution_id = resp.json()["executionId"]
    record = _ended(api, execution_id)
    assert record["status"] == "completed", record
    seen = see(api, execution_id)
    output = seen.output.decode()
    assert output.splitlines() == [
        "region=eu-west-1 keep=7 dry=true tag=abc key=***",
        "env=***",
        "second ***",
    ]
    sse = "".join(data for _, _, data in seen.sse)
    assert "key=***" in sse and SECRET not in sse
    assert SECRET not in seen.record.decode()

    # Redis: the record (spec included) and the event stream hold no secret.
    client = fleet.client()
    try:
        record_key = f"{fleet.prefix}:ex:{{{execution_id}}}:record"
        spec = client.hget(record_key, "spec")
        assert isinstance(spec, bytes) and b"key=***" in spec
        for key in client.scan_iter(match=f"{fleet.prefix}:*", count=1000):
            kind = client.type(key)
            if kind == b"hash":
                blob = repr(client.hgetall(key))
            elif kind == b"stream":
                blob = repr(client.xrange(key))
            elif kind == b"string":
                blob = repr(client.get(key))
            else:
                continue
            assert SECRET not in blob, key
    finally:
        client.close()

    # Archived: the database has the run, and no secret anywhere in it.
    engine = make_engine(fleet.database_url)
    try:

        def archived() -> bool:
            with engine.connect() as conn:
                row = conn.execute(
                    select(executions.c.status).where(executions.c.execution_id == execution_id)
                ).first()
            return row is not None and row.status == "completed"

        wait_until(archived, timeout_s=20, what="the run archived")
    finally:
        engine.dispose()
    dump = _pg_dump(fleet.database_url)
    assert execution_id in dump and SECRET not in dump

    assert fleet.worker is not None and fleet.relay is not None
    for log in (fleet.worker.log_path, fleet.relay.log_path):
        text = log.read_text(errors="replace")
        assert execution_id in text or log == fleet.relay.log_path
        assert SECRET not in text, log

    # A rerun: the secret was never stored, so it must be given again.
    again = api.post(f"/api/executions/{execution_id}/rerun", json={"hosts": "all"})
    assert again.status_code == 422, again.text
    assert [d["loc"][-1] for d in again.json()["detail"]] == ["api_key"]
    other = "other-" + uuid.uuid4().hex
    again = api.post(
        f"/api/executions/{execution_id}/rerun", json={"hosts": "all", "params": {"api_key": other}}
    )
    assert again.status_code == 202, again.text
    rerun_id = again.json()["executionId"]
    assert _ended(api, rerun_id)["status"] == "completed"
    out = api.get(f"/api/executions/{rerun_id}/output").text
    assert out.splitlines()[-1] == "second ***" and other not in out

    # The CLI's rerun: the same question, `--param` the answer.
    refused = run_cloudops("rerun", execution_id, env=_cli_env(fleet))
    assert refused.returncode == 2 and "api_key" in refused.stderr, refused.stderr
    ran = run_cloudops("rerun", execution_id, f"--param=api_key={other}", env=_cli_env(fleet))
    assert (ran.returncode, ran.stdout.splitlines()[-1]) == (0, "second ***"), ran.stderr
    assert other not in ran.stdout + ran.stderr


def test_a_fan_out_step_gets_the_secret_on_its_hosts(api: httpx.Client, fleet: Fleet) -> None:
    host = f"hist{fleet.starts}@test"
    text = (
        "name: fan\nparams:\n  api_key: {type: secret, required: true}\nsteps:\n"
        f"  - id: each\n    targets: {{hosts: [{host}]}}\n"
        '    command: echo "on $(hostname) {{ params.api_key }}"\n'
        '  - id: after\n    command: echo "after {{ params.api_key }}"\n'
    )
    body = {"commandType": "playbook", "playbook": text, "params": {"api_key": SECRET}}
    resp = api.post("/api/executions", json=body)
    assert resp.status_code == 202, resp.text
    execution_id = resp.json()["executionId"]
    record = _ended(api, execution_id)
    assert record["status"] == "completed", record
    out = api.get(f"/api/executions/{execution_id}/output").text
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].endswith(" ***") and lines[1] == "after ***", out
    assert SECRET not in out
