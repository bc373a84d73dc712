"""A rerun once Redis forgot the execution (CONTRACT §7, §8): a real worker and relay archiving
into PostgreSQL, every key of the prefix deleted, then the rerun served from the database's
record and stored spec; a saved playbook's rerun names the same name and version."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from events.db.engine import make_engine
from events.db.query import History
from tests.db.fleet import Fleet
from tests.helpers import wait_until
from tests.relay.test_rest import wait_status

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def fleet(tmp_path: Path, pg_url: str) -> Iterator[Fleet]:
    f = Fleet(tmp_path, pg_url)
    f.start(concurrency=2)
    yield f
    f.stop()


def _archived(url: str, ids: list[str]) -> bool:
    engine = make_engine(url)
    try:
        history = History(engine)
        states = [history.get_state(ex) for ex in ids]
        return all(s is not None and s.status == "failed" for s in states) and all(
            history.get_spec(ex) is not None for ex in ids
        )
    finally:
        engine.dispose()


def test_rerun_after_redis_forgot_it(fleet: Fleet, tmp_path: Path) -> None:
    flag = tmp_path / "fails"
    flag.touch()
    text = (
        "name: two\nparams: {word: hello}\nsteps:\n"
        "  - {id: first, command: 'echo first {{ params.word }}'}\n"
        f"  - {{id: second, command: 'test ! -e {flag} && echo second {{{{ params.word }}}}'}}\n"
    )
    api: httpx.Client
    with fleet.api() as api:
        put = api.put("/api/playbooks/two", content=text, headers={"Content-Type": "text/yaml"})
        assert put.status_code == 201, put.text
        resp = api.post("/api/executions", json={"playbookName": "two", "params": {"word": "hi"}})
        assert resp.status_code == 202, resp.text
        saved_run = resp.json()["executionId"]
        resp = api.post("/api/executions", json={"commandType": "script", "command": "exit 9"})
        command_run = resp.json()["executionId"]
        wait_status(api, saved_run, "failed")
        wait_status(api, command_run, "failed")
        ids = [saved_run, command_run]
        wait_until(lambda: _archived(fleet.database_url, ids), 30, what="both archived")
        assert fleet.forget_everything() > 0
        assert api.get(f"/api/executions/{saved_run}").json()["status"] == "failed"  # the DB's

        flag.unlink()
        resp = api.post(f"/api/executions/{saved_run}/rerun", json={"hosts": "failed"})
        assert resp.status_code == 202, resp.text
        new = resp.json()["executionId"]
        record = wait_status(api, new, "completed")
        assert record["rerunOf"] == saved_run
        assert (record["playbookName"], record["playbookVersion"]) == ("two", 1)
        assert [s["stepId"] for s in record["steps"]] == ["second"]
        # The same params as the run it reruns, not the playbook's defaults.
        assert api.get(f"/api/executions/{new}/output").text == "second hi\n"

        resp = api.post(f"/api/executions/{command_run}/rerun", json={})
        assert resp.status_code == 202, resp.text
        record = wait_status(api, resp.json()["executionId"], "failed")
        assert (record["command"], record["exitCode"], record["rerunOf"]) == (
            "exit 9",
            9,
            command_run,
        )
