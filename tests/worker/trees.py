"""A process tree for the cancel and timeout tests: a grandchild, a background job and a child
that ignores SIGTERM, each marked in its command line, and the checks that it is up or gone
(by scanning /proc for the marker, never by trusting a PID file)."""

from __future__ import annotations

import uuid

from tests.helpers import live_pids_with, wait_until


def new_marker() -> str:
    """A sleep duration no other process uses: `sleep <marker>N` marks a test's processes."""
    return f"300.{uuid.uuid4().int % 10**8:08d}"


def tree_script(marker: str) -> str:
    """A tree: a grandchild, a background job, a child that ignores SIGTERM."""
    return (
        f"echo started; "
        f"bash -c 'sleep {marker}1; true' & "
        f"(sleep {marker}2 &) ; "
        f"bash -c 'trap \"\" TERM; sleep {marker}3; true' & "
        f"sleep {marker}4"
    )


def wait_tree_up(marker: str) -> None:
    wait_until(lambda: len(live_pids_with(marker)) >= 4, 10, what="the tree to start")


def assert_tree_dead(marker: str) -> None:
    assert live_pids_with(marker) == [], f"left running: {live_pids_with(marker)}"
