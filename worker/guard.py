"""The client of the guard server (worker/guard_server.py): a command started under a guard.

One guard server per process that runs commands, started on first use (a pool process that
forked from one gets its own: the fork's copy of the socket is closed). The per-command control
socket is this process's alone (non-inheritable, and nothing here forks with it open): its EOF
is how the guard learns that we died, by any means, and kills the tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from worker.guard_server import GO
from worker.proctree import Anchor

_SERVER_PY = str(Path(__file__).with_name("guard_server.py"))
# A guard answers within milliseconds; this long means it never will.
_ANSWER_S = 10.0


class LaunchAborted(Exception):
    """`launch`'s `ready` said no: the command was never started (its guard went away)."""


class GuardedTree:
    """A command's tree as its guard sees it (implements worker.proctree.CommandTree)."""

    def __init__(
        self, control: socket.socket, pid: int, anchors: tuple[Anchor, ...], pending: bytes
    ) -> None:
        self._control = control
        self.pid = pid
        self.anchors = anchors
        self.returncode: int | None = None
        self._left = 0
        self._done = False
        self._pending = b""
        self._take(pending)  # a quick command's exit may have come with the pid line

    def exit_fd(self) -> int | None:
        return None if self.returncode is not None else self._control.fileno()

    def readable(self) -> bool:
        self._read(block=False)
        return self.returncode is not None

    def poll(self) -> int | None:
        return self.returncode

    def wait(self) -> int:
        while self.returncode is None:
            self._read(block=True)
        return self.returncode

    def leftovers(self) -> bool:
        return self._left > 0

    def signal(self, sig: signal.Signals) -> None:
        self._send(b"kill\n" if sig == signal.SIGKILL else b"term\n")

    def end(self, grace_s: float) -> None:
        """The guard kills what is left and answers `done`; then it is released."""
        self._send(b"end\n")
        if self.returncode is not None and self._left == 0 and not self._done:
            # The guard had no child left after the leader's exit: only a descendant can add
            # one, so the tree stays empty. No need to wait for its answer (a scheduling hop).
            self._control.close()
            return
        deadline = time.monotonic() + grace_s + 6.0  # its own bound is 5 s
        while not self._done and time.monotonic() < deadline:
            self._read(block=True, timeout_s=max(0.0, deadline - time.monotonic()))
        self._control.close()

    def _send(self, line: bytes) -> None:
        with contextlib.suppress(OSError):
            self._control.sendall(line)

    def _read(self, *, block: bool, timeout_s: float | None = None) -> None:
        if self._done:
            return
        if block:
            ready, _, _ = select.select([self._control], [], [], timeout_s)
            if not ready:
                return
        try:
            data = self._control.recv(4096, 0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the guard died (killed by hand?): nothing more will come
            self._done = True
            if self.returncode is None:
                self.returncode = -signal.SIGKILL
            return
        self._take(data)

    def _take(self, data: bytes) -> None:
        self._pending += data
        while b"\n" in self._pending:
            line, self._pending = self._pending.split(b"\n", 1)
            words = line.split()
            if words[0] == b"exit":
                self.returncode, self._left = int(words[1]), int(words[2])
            elif words[0] == b"done":
                self._done = True


class GuardServer:
    """This process's guard server, started on first use, restarted if it died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def launch(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: str | None,
        stdout_w: int,
        stderr_w: int,
        *,
        ready: Callable[[], bool] | None = None,
    ) -> GuardedTree:
        """Start `argv` under a new guard. Raises OSError as Popen would (FileNotFoundError...).
        `ready`: called once the guard is asked for (it forks meanwhile and waits for the
        command), right before the command is sent to it; False ends the guard, which started
        nothing, and raises LaunchAborted."""
        mine, theirs = socket.socketpair()
        try:
            self._request(theirs.fileno(), stdout_w, stderr_w)
        finally:
            theirs.close()
        try:
            # The spec goes first and the guard reads it while `ready` waits (a fan-out step's
            # start barrier): once it says go, a byte is all that is left to send.
            spec = json.dumps({"argv": list(argv), "env": dict(env), "cwd": cwd}).encode()
            mine.sendall(len(spec).to_bytes(4, "big") + spec)
            if ready is not None and not ready():
                mine.close()  # the guard reads EOF instead of its go and exits
                raise LaunchAborted
            mine.sendall(GO)
            words, rest = _answer(mine)
        except BaseException:
            mine.close()
            raise
        if words[0] == "pid":
            leader, leader_start, guard, guard_start = (int(w) for w in words[1:5])
            anchors = (Anchor("guard", guard, guard_start), Anchor("session", leader, leader_start))
            return GuardedTree(mine, leader, anchors, rest)
        mine.close()
        if words[0] == "error":
            raise OSError(int(words[1]), " ".join(words[2:]))
        raise OSError(f"the guard did not start the command: {' '.join(words)[:200]}")

    def prestart(self) -> None:
        """Start the server now (a pool process's init), not with the first command."""
        with self._lock:
            self._server()

    def _request(self, control: int, stdout_w: int, stderr_w: int) -> None:
        with self._lock:
            for attempt in range(2):
                sock = self._server()
                try:
                    socket.send_fds(sock, [b"g"], [control, stdout_w, stderr_w])
                    return
                except OSError:
                    if attempt:
                        raise
                    self._drop()  # it died: start another

    def _server(self) -> socket.socket:
        if self._sock is not None and self._proc is not None and self._proc.poll() is None:
            return self._sock
        self._drop()
        mine, theirs = socket.socketpair()
        fd = theirs.fileno()
        # Its own session: a signal to our process group (kill -9 -PGID) must not reach it.
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-S", _SERVER_PY, str(fd)],
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        theirs.close()
        self._sock = mine
        return mine

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        if self._proc is not None:
            self._proc.poll()
        self._proc = None

    def forget_after_fork(self) -> None:
        """In a forked child: the parent's server is the parent's (our copy of its socket
        would keep it alive after the parent died)."""
        self._lock = threading.Lock()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self._proc = None


def _answer(sock: socket.socket) -> tuple[list[str], bytes]:
    """The guard's first line, and what came after it."""
    data = b""
    deadline = time.monotonic() + _ANSWER_S
    while b"\n" not in data:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([sock], [], [], max(0.0, left))
        chunk = sock.recv(4096) if ready else b""
        if not chunk:
            raise OSError("the guard gave no answer")
        data += chunk
    line, rest = data.split(b"\n", 1)
    return line.decode(errors="replace").split() or ["?"], rest


SERVER = GuardServer()
os.register_at_fork(after_in_child=SERVER.forget_after_fork)
