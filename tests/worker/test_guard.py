"""The guard alone (real processes, no Redis, no Celery): what the executor's guard catches.

A daemon that left the command's session (a double fork into a new session, what `daemon`,
`nohup ... &` in a subshell and service scripts do) is neither a session member nor a
descendant of a live process: only the guard, the tree's child subreaper, still holds it.
Every process of a test carries its marker as argv[0] (`exec -a`), so /proc tells what is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest

from events.coalescer import Stream
from tests.helpers import live_pids_with, wait_until
from worker.executor import CommandSpec, Executor, RunResult


def new_marker() -> str:
    return f"guard{uuid.uuid4().hex[:12]}"


def run(
    script: str, *, guard: bool = True, timeout_s: float | None = None, stop_after_s: float = 0
) -> tuple[RunResult, list[tuple[Stream, str]]]:
    chunks: list[tuple[Stream, str]] = []
    executor = Executor(
        CommandSpec(["bash", "-c", script], env=dict(os.environ), timeout_s=timeout_s),
        lambda stream, text: chunks.append((stream, text)),
        kill_grace_s=0.5,
        guard=guard,
    )
    if stop_after_s:
        threading.Timer(stop_after_s, executor.request_stop).start()
    try:
        return executor.run(), chunks
    finally:
        executor.close()


def daemon(marker: str, then: str = "") -> str:
    """A double fork into a new session whose parent exits at once."""
    return f"(setsid bash -c \"trap '' TERM HUP; {then} exec -a {marker} sleep 300\" &)"


@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_a_daemon_in_its_own_session_dies_with_the_run(how: str) -> None:
    m = new_marker()
    script = f"{daemon(m)}; echo ready; exec -a {m} sleep 300"
    if how == "timeout":
        result, _ = run(script, timeout_s=1)
    else:
        result, _ = run(script, stop_after_s=1)
    assert result.status == ("timeout" if how == "timeout" else "cancelled")
    assert live_pids_with(m) == []  # dead before run() returned


def test_without_the_guard_such_a_daemon_survives() -> None:
    """What the guard is for (and why the second line of defence exists without it)."""
    m = new_marker()
    try:
        result, _ = run(f"{daemon(m)}; echo ready; sleep 1", guard=False)
        assert result.status == "completed"
        assert len(live_pids_with(m)) == 1
    finally:
        for pid in live_pids_with(m):
            os.kill(pid, signal.SIGKILL)


def test_a_daemons_output_after_its_parent_left_reaches_the_stream() -> None:
    m = new_marker()
    script = f"{daemon(m, 'sleep 0.3; echo late;')}; echo ready; sleep 1.5; echo done"
    result, chunks = run(script)
    assert result.status == "completed"
    assert "".join(text for stream, text in chunks if stream == "stdout") == "ready\nlate\ndone\n"
    assert live_pids_with(m) == []  # the leader ended: what it left went with it


def test_the_tree_dies_when_the_process_running_it_is_sigkilled() -> None:
    """A process running a command is SIGKILLed (as the OOM killer would): the guard sees its
    end of the control socket close and kills the tree, daemons included, within 5 s."""
    m = new_marker()
    code = textwrap.dedent(
        f"""
        import os, sys
        from worker.executor import CommandSpec, Executor
        script = {f"{daemon(m)}; exec -a {m} sleep 300"!r}
        spec = CommandSpec(["bash", "-c", script], env=dict(os.environ))
        Executor(spec, lambda s, t: None).run()
        """
    )
    runner = subprocess.Popen([sys.executable, "-c", code], cwd=os.getcwd())
    try:
        started = lambda: len(set(live_pids_with(m)) - {runner.pid}) == 2  # noqa: E731
        wait_until(started, 20, what="the command to start")
        runner.kill()
        runner.wait(5)
        wait_until(lambda: not live_pids_with(m), 5, 0.05, what="the guard to kill the tree")
    finally:
        runner.kill()
        for pid in live_pids_with(m):
            os.kill(pid, signal.SIGKILL)


def test_the_tree_dies_when_the_run_itself_fails() -> None:
    """A bug or a failure between start and finish (here: the on_start hook) still leaves
    nothing running."""
    m = new_marker()

    def fail(_: object) -> None:
        raise RuntimeError("on_start failed")

    spec = CommandSpec(["bash", "-c", f"{daemon(m)}; exec -a {m} sleep 300"], dict(os.environ))
    executor = Executor(spec, lambda s, t: None, on_start=fail)
    with pytest.raises(RuntimeError):
        executor.run()
    executor.close()
    assert live_pids_with(m) == []
