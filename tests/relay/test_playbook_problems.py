"""A bad playbook through a real relay with the real dispatcher (`cloudops relay`'s; no worker
is needed to refuse one): a 422 whose detail lists every problem as `{"loc", "msg"}`, and the
CLI through that relay printing one line each and exiting 2 (CONTRACT §5, issue 14 item 7)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import embedded_env, run_cloudops
from tests.relay.conftest import StartRelay
from tests.test_playbook_problems import FOUR_EXPECTED, FOUR_IN_THREE

pytestmark = pytest.mark.integration


def test_every_problem_is_in_the_422_and_on_the_clis_stderr(
    start: StartRelay, token: str, tmp_path: Path
) -> None:
    relay = start(env={"RELAY_TEST_DISPATCHER": "celery"})
    with relay.client() as api:
        for playbook in (FOUR_IN_THREE, yaml.safe_load(FOUR_IN_THREE)):
            resp = api.post(
                "/api/executions", json={"commandType": "playbook", "playbook": playbook}
            )
            assert resp.status_code == 422, resp.text
            detail = resp.json()["detail"]
            assert [d["loc"] for d in detail] == [["body", *e[0]] for e in FOUR_EXPECTED]
            for d, (_, line, number, step_id, key, says) in zip(detail, FOUR_EXPECTED, strict=True):
                assert set(d) == {"loc", "msg"}
                at_line = f"line {line}, " if isinstance(playbook, str) else ""
                assert d["msg"].startswith(
                    f"<request>, {at_line}step {number} ({step_id}), field {key}: "
                ), d
                assert says in d["msg"]
        # The run's params are problems of the request too, beside the playbook's.
        resp = api.post(
            "/api/executions",
            json={"commandType": "playbook", "playbook": FOUR_IN_THREE, "params": {"x": 1}},
        )
        assert resp.status_code == 422
        assert resp.json()["detail"][-1] == {
            "loc": ["body", "params", "x"],
            "msg": "<request>, params: unknown param 'x'; this playbook's params are: none",
        }
        # No name: a request body's playbook is called `playbook`.
        resp = api.post(
            "/api/executions",
            json={"commandType": "playbook", "playbook": "steps:\n  - command: echo hi\n"},
        )
        assert resp.status_code == 202, resp.text
        record = api.get(f"/api/executions/{resp.json()['executionId']}").json()
        assert (record["command"], record["commandType"]) == ("playbook", "playbook")

    path = tmp_path / "build.yml"
    path.write_text(FOUR_IN_THREE)
    env = {**embedded_env(), "CLOUDOPS_API_TOKEN": token}
    r = run_cloudops("run", "--remote", relay.base_url, "--playbook", str(path), env=env)
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    # The relay's `<request>` is the file it came from.
    assert [ln.partition(", field ")[0] for ln in lines] == [
        f"cloudops: error: {path}, line {line}, step {number} ({step_id})"
        for _, line, number, step_id, *_ in FOUR_EXPECTED
    ]
    relay.stop()
    assert "Traceback" not in relay.logs()
