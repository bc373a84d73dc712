"""Find and kill every process a command left behind, through /proc.

A command runs as the leader of its own session (`start_new_session=True`), so its background
jobs, grandchildren and sub-process-groups all share its session id, even after the leader
exited and they were re-parented. Only a process that calls setsid() itself leaves the session;
those are caught as descendants while their parent is alive.
"""

from __future__ import annotations

import contextlib
import os
import signal


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
