"""The second line of defence: the host's record of running commands, and the sweep of what
a lost execution left.

When a command starts, its record (one small file per execution under
`<state_dir>/<key_prefix>/<worker hostname>/`) names the pool process running it, its guard and
its leader's session, each by pid and start time (a pid is reused, a pid and a start time
never); the record goes when the run ended and nothing of it is left. A record whose pool
process is gone is a lost execution's: `kill_leftovers`, run when a worker starts on the host,
kills its guard's descendants and its session's members, and logs what it killed (names only:
a command line may hold a secret). Nothing is ever matched by name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import time
from pathlib import Path

from worker.guard_server import descendants, start_time
from worker.proctree import Anchor, CommandTree, alive, session_members

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9@._-]")
_KILL_S = 5.0


def host_dir(state_dir: str, key_prefix: str, hostname: str) -> Path:
    return Path(state_dir) / _UNSAFE.sub("_", key_prefix) / _UNSAFE.sub("_", hostname)


class HostRecord:
    """One execution's record on this host."""

    def __init__(self, directory: Path, execution_id: str) -> None:
        self._path = directory / _UNSAFE.sub("_", execution_id)

    def write(self, tree: CommandTree) -> None:
        me = os.getpid()
        anchors = (Anchor("pool", me, start_time(me)), *tree.anchors)
        lines = "".join(f"{a.kind} {a.pid} {a.start}\n" for a in anchors)
        host = self._path.parent
        try:
            # Ours alone at every level (kill_leftovers trusts nothing else). The directories
            # stay: removing them would race with other processes' runs writing theirs.
            host.parent.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            host.parent.mkdir(mode=0o700, exist_ok=True)
            host.mkdir(mode=0o700, exist_ok=True)
            self._path.write_text(lines)
        except OSError as e:  # a full or read-only disk must not fail the run
            log.warning("cannot record the command's processes in %s: %s", self._path, e)

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self._path.unlink()


def _alive(anchor: Anchor) -> bool:
    """The very process, and not a zombie (a SIGKILLed pool process whose parent died too may
    wait a moment for init to reap it)."""
    return anchor.start != 0 and start_time(anchor.pid) == anchor.start and alive(anchor.pid)


def _read(path: Path) -> list[Anchor]:
    anchors = []
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            kind, pid, start = line.split()
            anchors.append(Anchor(kind, int(pid), int(start)))
    return anchors


def _targets(anchors: list[Anchor]) -> set[int]:
    """The processes a lost record still names."""
    found: set[int] = set()
    for a in anchors:
        if a.kind == "guard" and _alive(a):
            found.update(descendants(a.pid))
            found.add(a.pid)
        elif a.kind == "session" and start_time(a.pid) in (0, a.start):
            # Its leader, a zombie or gone (not another process with its pid): a session id is
            # not reused while a member lives, even after its leader died.
            found.update(session_members(a.pid))
    found.discard(os.getpid())
    return found


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def kill_leftovers(state_dir: str, key_prefix: str, hostname: str) -> dict[str, dict[int, str]]:
    """Kill what lost executions of this host left; return {execution_id: {pid: name}}."""
    directory = host_dir(state_dir, key_prefix, hostname)
    try:
        paths = sorted(directory.iterdir())
    except OSError:
        return {}
    if not _trusted(directory, Path(state_dir)):
        return {}
    killed: dict[str, dict[int, str]] = {}
    for path in paths:
        anchors = _read(path)
        if any(a.kind == "pool" and _alive(a) for a in anchors):
            continue  # its pool process runs it still
        pids = _sweep(anchors)
        if pids:
            killed[path.name] = pids
            names = ", ".join(f"{pid} ({name})" for pid, name in sorted(pids.items())[:20])
            log.warning(
                "killed %d processes left by lost execution %s: %s", len(pids), path.name, names
            )
        with contextlib.suppress(OSError):
            path.unlink()
    return killed


def _trusted(directory: Path, root: Path) -> bool:
    """Records are obeyed only where nobody else could have written them (a shared /tmp: a
    planted record must not make us kill our own processes)."""
    for d in (directory, directory.parent, root):
        st = d.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            log.warning("not sweeping leftovers: %s is not ours alone", d)
            return False
    return True


def _sweep(anchors: list[Anchor]) -> dict[int, str]:
    """SIGKILL the record's processes until none is left: the guard last (its descendants
    would be re-parented out of reach), anything forked meanwhile too."""
    killed: dict[int, str] = {}
    deadline = time.monotonic() + _KILL_S
    while (targets := _targets(anchors)) and time.monotonic() < deadline:
        guards = {a.pid for a in anchors if a.kind == "guard"}
        for pid in sorted(targets, key=lambda p: p in guards):
            name = _name(pid)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                killed.setdefault(pid, name)
        time.sleep(0.01)
    return killed
