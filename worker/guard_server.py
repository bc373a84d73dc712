"""The guard server and its per-command guards: nothing a command starts outlives its run.

Started once per process that runs commands (`python -I -S guard_server.py <fd>`: stdlib only,
no site, nothing of the project), in a session of its own so that a signal to the worker's
process group never reaches it. For each command the client (worker/guard.py) sends it a control
socket and the two pipes' write ends; it forks a guard, which is cheap from this small process
(forking the worker's pool process costs milliseconds).

A guard is the command tree's child subreaper (PR_SET_CHILD_SUBREAPER): whatever detaches (a
background job, a double fork, setsid, a new process group) is re-parented to it, never to init,
so its descendants are always the whole tree. It starts the command, reports its leader's exit,
obeys `term` / `kill` / `end` lines, and when its control socket reaches EOF (only the process
that asked for it holds the other end: it died, however) it kills the whole tree and leaves.

Protocol, one line each way: the client sends a 4-byte length and the spec as JSON
({argv, env, cwd}), then `g` when the command is to start (EOF instead: nothing starts; the
spec is read and prepared meanwhile, so that a start barrier's release costs a byte); the
guard answers `pid <leader> <leader start> <guard> <guard start>` or
`error <errno> <message>`, later `exit <returncode> <children left>` and, after `end`, `done`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Any

_PR_SET_CHILD_SUBREAPER = 36
# Loaded once by the server, before it forks any guard.
_LIBC = ctypes.CDLL(None, use_errno=True)
# What the client (worker/guard.py) sends after the spec when the command is to start.
GO = b"g"
# How long `end` keeps killing: a process in uninterruptible sleep may take a moment to die.
_END_S = 5.0


def start_time(pid: int) -> int:
    """Field 22 of /proc/<pid>/stat (clock ticks since boot): with the pid, it names one
    process for ever (a pid is reused, a pid and start time never). 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0
    return int(data[data.rfind(b")") + 2 :].split()[19])


def children(pid: int) -> list[int]:
    """The live children of `pid`, from every one of its threads."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(n) for n in f.read().split())
        except OSError:
            continue
    return found


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children(stack.pop()):
            found.append(child)
            stack.append(child)
    return found


class Guard:
    """One command's guard, in the process forked for it."""

    def __init__(self, control: socket.socket, stdout_fd: int, stderr_fd: int) -> None:
        self.control = control
        self.fds = (stdout_fd, stderr_fd)
        self.leader = 0
        self.wake_r, self.wake_w = os.pipe()

    def send(self, line: str) -> None:
        # The client may be gone: its EOF is what we act on.
        with contextlib.suppress(OSError):
            self.control.sendall(line.encode() + b"\n")

    def run(self) -> None:
        _LIBC.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        spec = self.read_spec()
        if spec is None:
            return
        argv = [str(a) for a in spec["argv"]]
        cwd = None if spec.get("cwd") is None else str(spec["cwd"])
        env = {str(k): str(v) for k, v in spec["env"].items()}
        # Gating the exec itself (a preexec_fn that waits for the go in the forked child)
        # measured no better: the start's cost is the exec and the machine's other work.
        if self.recv_exactly(1) != GO:  # EOF: the client gave up before the start
            return
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self.fds[0],
                stderr=self.fds[1],
                cwd=cwd,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as e:
            self.send(f"error {e.errno or 0} {e.strerror or e}")
            return
        finally:
            for fd in self.fds:
                os.close(fd)
        self.leader = proc.pid
        proc.returncode = 0  # we reap it ourselves (waitpid(-1)); Popen must not try
        me = os.getpid()
        self.send(f"pid {proc.pid} {start_time(proc.pid)} {me} {start_time(me)}")
        self.serve()

    def read_spec(self) -> dict[str, Any] | None:
        head = self.recv_exactly(4)
        if head is None:
            return None
        body = self.recv_exactly(int.from_bytes(head, "big"))
        return None if body is None else dict(json.loads(body))

    def recv_exactly(self, n: int) -> bytes | None:
        parts: list[bytes] = []
        while n > 0:
            part = self.control.recv(min(n, 1 << 20))
            if not part:
                return None
            parts.append(part)
            n -= len(part)
        return b"".join(parts)

    def serve(self) -> None:
        pending = b""
        while True:
            ready, _, _ = select.select([self.control.fileno(), self.wake_r], [], [])
            if self.wake_r in ready:
                os.read(self.wake_r, 4096)
            self.reap()
            if self.control.fileno() not in ready:
                continue
            try:
                data = self.control.recv(4096)
            except OSError:
                data = b""
            if not data:
                self.end()  # the process that asked for us died: the tree goes with it
                return
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line == b"term":
                    self.signal_all(signal.SIGTERM)
                elif line == b"kill":
                    self.signal_all(signal.SIGKILL)
                elif line == b"end":
                    self.end()
                    self.send("done")
                    return

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.leader:
                code = os.waitstatus_to_exitcode(status)
                self.reap()
                self.send(f"exit {code} {len(children(os.getpid()))}")

    def signal_all(self, sig: signal.Signals) -> None:
        for pid in descendants(os.getpid()):
            with contextlib.suppress(OSError):
                os.kill(pid, sig)

    def end(self) -> None:
        """SIGKILL every descendant until none is left (or _END_S passed), reaping them."""
        deadline = time.monotonic() + _END_S
        me = os.getpid()
        while children(me) and time.monotonic() < deadline:
            self.signal_all(signal.SIGKILL)
            self.reap()
            select.select([self.wake_r], [], [], 0.01)
        self.reap()


def serve(sock: socket.socket) -> None:
    """Fork a guard for each request, until the client's end of `sock` closes."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the guards
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(sock, 16, 3)
        except OSError:
            return
        if not msg:
            return
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            continue
        if os.fork() == 0:
            code = 0
            try:
                sock.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                Guard(socket.socket(fileno=fds[0]), fds[1], fds[2]).run()
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
