"""A command's process tree: what the executor needs of it, and the unguarded kind, in /proc.

The executor sees a `CommandTree`: its leader's exit, a signal to the whole tree, and an end
that leaves nothing running. Under a guard (worker/guard.py, the default) that is the guard's
job, and it catches everything. Without one (`CLOUDOPS_GUARD=0`), `SessionTree`: the command
runs as the leader of its own session (`start_new_session=True`), so its background jobs,
grandchildren and sub-process-groups all share its session id, even after the leader exited and
they were re-parented. Only a process that calls setsid() itself leaves the session; those are
caught as descendants while their parent is alive (and by the host's record on the next start
of a worker, worker/leftovers.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from typing import NamedTuple, Protocol

from worker.guard_server import start_time


class Anchor(NamedTuple):
    """A process that identifies a command's tree on this host: `guard` (its descendants are
    the tree) or `session` (its session's members are), by pid and start time."""

    kind: str
    pid: int
    start: int


class CommandTree(Protocol):
    pid: int  # the leader's
    anchors: tuple[Anchor, ...]

    def exit_fd(self) -> int | None:
        """Readable when the leader may have exited (None: poll())."""

    def readable(self) -> bool:
        """exit_fd() was readable: True if it is done with (drop it from the poll set)."""

    def poll(self) -> int | None: ...

    def wait(self) -> int: ...

    def leftovers(self) -> bool:
        """After the leader's exit: whether anything of the command is still running."""

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to every process of the tree."""

    def end(self, grace_s: float) -> None:
        """Once the leader exited: kill whatever is left; return when nothing is."""


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, sid) of a process, or None if it is gone."""
    # os.open/os.read rather than open(): a scan reads every process's stat, and the buffered
    # file object costs more than the read itself.
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # The command name may hold spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(b")") + 2 :].split()
    return rest[0].decode(), int(rest[1]), int(rest[3])


def _all_pids() -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def session_members(sid: int, also_descendants_of: int | None = None) -> set[int]:
    """Live (non-zombie) processes in session `sid`, plus the descendants of a pid."""
    members: set[int] = set()
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        st = _stat(pid)
        if st is None or st[0] in ("Z", "X"):
            continue
        _state, ppid, psid = st
        if psid == sid:
            members.add(pid)
        children.setdefault(ppid, []).append(pid)
    if also_descendants_of is not None:
        stack = [also_descendants_of]
        while stack:
            for child in children.get(stack.pop(), []):
                if child not in members:
                    members.add(child)
                    stack.append(child)
    members.discard(os.getpid())
    return members


def signal_session(sid: int, sig: signal.Signals, root: int | None = None) -> int:
    """Send `sig` to every live process of the session (and the root's descendants).
    Returns how many were signalled."""
    count = 0
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, sig)
    for pid in session_members(sid, root):
        try:
            os.kill(pid, sig)
            count += 1
        except (ProcessLookupError, PermissionError):
            pass
    return count


def alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def parent_died(parent_pid: int, wait_s: float = 1.0) -> bool:
    """Whether the process that forked us (a pool process's worker) died. The parent-death
    SIGTERM comes when the thread that forked us exits, possibly before the process is gone
    and we are re-parented: a dead leader whose other threads still exit stays our parent, a
    zombie. `wait_s`: how long to give it before deciding it lives (SIGTERM of a shutdown)."""
    deadline = time.monotonic() + wait_s
    while True:
        if os.getppid() != parent_pid or not alive(parent_pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


class SessionTree:
    """An unguarded command: the leader of its own session, its child."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.anchors: tuple[Anchor, ...] = (Anchor("session", proc.pid, start_time(proc.pid)),)
        self._pidfd = _pidfd(proc.pid)
        self._empty = False  # seen empty after the leader ended

    def exit_fd(self) -> int | None:
        return self._pidfd

    def readable(self) -> bool:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        return True

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait(self) -> int:
        self.readable()
        return self.proc.wait()

    def leftovers(self) -> bool:
        # Only a member can add a member: an empty session stays empty, and end() need not
        # scan /proc again (half of a short command's cost in a worker).
        self._empty = not session_members(self.pid, None)
        return not self._empty

    def signal(self, sig: signal.Signals) -> None:
        signal_session(self.pid, sig, None if self.proc.returncode is not None else self.pid)

    def end(self, grace_s: float) -> None:
        # The pipes are closed, but a member that closed them may still live: make sure.
        deadline = time.monotonic() + grace_s
        while not self._empty and session_members(self.pid):
            if time.monotonic() >= deadline:
                break
            signal_session(self.pid, signal.SIGKILL)
            time.sleep(0.01)


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
