"""The saved playbooks store (events.db.playbooks) on both dialects: versions 1, 2, ...; the
same text again stores nothing; a bad playbook is refused before anything is stored; reads of
any version; what a run by name is told when the name or version does not exist; delete; and
concurrent saves of one name on PostgreSQL never share a version."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Engine

from events.db.playbooks import PlaybookStore
from events.errors import InvalidRequestError, UnknownPlaybookError
from worker.playbook.errors import PlaybookError
from worker.playbook.loading import check_for_saving

V1 = "name: rotate\nsteps:\n  - command: echo one\n"
V2 = "name: rotate\nsteps:\n  - command: echo two {{ params.keep }}\n"


@pytest.fixture
def store(engine: Engine) -> PlaybookStore:
    return PlaybookStore(engine, check_for_saving)


def test_each_save_is_the_next_version_and_the_same_text_again_is_not(
    store: PlaybookStore,
) -> None:
    first = store.save("rotate-logs", V1, "ops-bot")
    # V2 uses a param without a default: fine to save, its runs give the value.
    second = store.save("rotate-logs", V2)
    again = store.save("rotate-logs", V2)
    assert (first.created, first.playbook.version) == (True, 1)
    assert (second.created, second.playbook.version) == (True, 2)
    assert (again.created, again.playbook.version) == (False, 2)
    latest = store.get("rotate-logs")
    assert (latest.version, latest.yaml) == (2, V2)
    assert [v.version for v in latest.versions] == [1, 2]
    old = store.get("rotate-logs", 1)
    assert (old.yaml, old.created_by) == (V1, "ops-bot")
    wire = old.wire()
    assert wire["createdBy"] == "ops-bot" and wire["createdAt"].endswith("Z")
    assert [v["version"] for v in wire["versions"]] == [1, 2]
    # The same text as an older version is a change from the latest: a new version.
    assert store.save("rotate-logs", V1).playbook.version == 3
    [summary] = store.summaries()
    assert (summary["name"], summary["version"]) == ("rotate-logs", 3)
    assert summary["updatedAt"] == store.get("rotate-logs").wire()["createdAt"]


def test_a_bad_playbook_or_name_is_refused_and_nothing_is_stored(store: PlaybookStore) -> None:
    with pytest.raises(PlaybookError) as bad:
        store.save("broken", "name: broken\nsteps:\n  - name: no command\n")
    assert bad.value.field == "playbook" and "command" in str(bad.value)
    with pytest.raises(InvalidRequestError, match=r"^name: must be"):
        store.save("has space", V1)
    assert store.summaries() == []
    with pytest.raises(UnknownPlaybookError):
        store.get("broken")


def test_a_run_by_name_is_told_which_field_is_wrong(store: PlaybookStore) -> None:
    store.save("rotate", V1)
    store.save("rotate", V2)
    assert store.for_run("rotate").ref.version == 2
    assert store.for_run("rotate", 1).yaml == V1
    with pytest.raises(InvalidRequestError) as name:
        store.for_run("nope")
    assert name.value.field == "playbookName" and "'nope'" in name.value.message
    with pytest.raises(InvalidRequestError) as version:
        store.for_run("rotate", 7)
    assert version.value.field == "version"
    assert version.value.message == "'rotate' has no version 7 (it has 1, 2)"


def test_delete_removes_every_version(store: PlaybookStore) -> None:
    store.save("a", V1)
    store.save("a", V2)
    store.save("b", V1)
    assert store.delete("a") == 2
    with pytest.raises(UnknownPlaybookError):
        store.get("a", 1)
    with pytest.raises(UnknownPlaybookError):
        store.delete("a")
    assert [s["name"] for s in store.summaries()] == ["b"]
    # A name saved again after a delete starts over.
    assert store.save("a", V2).playbook.version == 1


def test_concurrent_saves_of_one_name_get_distinct_versions(
    store: PlaybookStore, engine: Engine
) -> None:
    texts = [f"name: race\nsteps:\n  - command: echo {i}\n" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        versions = sorted(pool.map(lambda t: store.save("race", t).playbook.version, texts))
    assert versions == list(range(1, 9))
    assert sorted(store.get("race", v).yaml for v in versions) == sorted(texts)


def test_text_the_yaml_reader_refuses_is_bad_input(store: PlaybookStore) -> None:
    # Found by the relay's fuzzing: a C1 control character failed before the YAML parse.
    with pytest.raises(PlaybookError, match="unacceptable character #x0087"):
        store.save("ctl", "name: x\nsteps:\n  - command: echo \x87\n")
    assert store.summaries() == []
