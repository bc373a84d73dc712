"""The host's record of running commands, and the sweep of what a lost execution left, alone
(real processes, no worker: tests/faults/test_command_tree.py has the restarted worker)."""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import live_pids_with, wait_until
from worker.guard_server import start_time
from worker.leftovers import HostRecord, host_dir, kill_leftovers
from worker.proctree import Anchor, SessionTree


@pytest.fixture
def orphan_tree() -> Iterator[tuple[str, SessionTree]]:
    """A session whose leader is gone and whose child runs on, as a lost run leaves it."""
    marker = f"left{uuid.uuid4().hex[:12]}"
    script = f"(exec -a {marker} sleep 300) & echo $! ; wait"
    proc = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, start_new_session=True)
    tree = SessionTree(proc)
    assert proc.stdout is not None
    proc.stdout.readline()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    yield marker, tree
    for pid in live_pids_with(marker):
        os.kill(pid, signal.SIGKILL)


def record(state: Path, tree: SessionTree, pool: Anchor) -> None:
    """The record of `tree` as written when it started, run by the pool process `pool`."""
    where = host_dir(str(state), "p", "h@x")
    HostRecord(where, "ex_1").write(tree)  # the directories, as a run makes them
    lines = [f"{a.kind} {a.pid} {a.start}\n" for a in (pool, *tree.anchors)]
    (where / "ex_1").write_text("".join(lines))


def test_a_lost_record_is_swept_and_what_it_killed_is_named(
    tmp_path: Path, orphan_tree: tuple[str, SessionTree]
) -> None:
    marker, tree = orphan_tree
    state = tmp_path / "state"
    record(state, tree, Anchor("pool", tree.pid, 1))  # a pool process that is gone
    [orphan] = live_pids_with(marker)
    killed = kill_leftovers(str(state), "p", "h@x")
    assert killed == {"ex_1": {orphan: "sleep"}}
    wait_until(lambda: not live_pids_with(marker), 5)
    assert not (host_dir(str(state), "p", "h@x") / "ex_1").exists()


def test_a_record_whose_pool_process_lives_is_left_alone(
    tmp_path: Path, orphan_tree: tuple[str, SessionTree]
) -> None:
    marker, tree = orphan_tree
    state = tmp_path / "state"
    record(state, tree, Anchor("pool", os.getpid(), start_time(os.getpid())))
    assert kill_leftovers(str(state), "p", "h@x") == {}
    assert len(live_pids_with(marker)) == 1


def test_a_record_others_could_have_written_is_not_obeyed(
    tmp_path: Path, orphan_tree: tuple[str, SessionTree]
) -> None:
    marker, tree = orphan_tree
    state = tmp_path / "state"
    record(state, tree, Anchor("pool", tree.pid, 1))
    host_dir(str(state), "p", "h@x").chmod(0o777)
    assert kill_leftovers(str(state), "p", "h@x") == {}
    assert len(live_pids_with(marker)) == 1
