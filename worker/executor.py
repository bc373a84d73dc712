"""Run one command: start it in its own session, pump its pipes, enforce its deadline, finish.

The executor knows nothing of Celery or Redis: output goes to an `emit(stream, text)` callback
(through the coalescer), and a cancel arrives through `request_stop()`, which is safe to call
from a signal handler or another thread. Whatever the outcome, the pipes are drained to EOF
and every process of the command's session is dead before `run()` returns.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import selectors
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from events.coalescer import OutputCoalescer, Stream
from events.masking import Masker
from worker.proctree import session_members, signal_session

_READ_BYTES = 256 * 1024
# A stream whose last read brought less than this trickles: when it alone becomes readable it is
# held (left unread, its fd out of the poll set) until its chunk is due, so a command printing a
# line per ms costs one wake-up per chunk instead of one per line. A stream that reads more is
# drained at every wake-up, so a fast command never waits on us.
_TRICKLE_BYTES = 16 * 1024
# Bigger pipes (best effort) so that a held stream that suddenly bursts does not block its
# writer before the hold ends.
_PIPE_BYTES = 1024 * 1024
_F_SETPIPE_SZ = 1031
# Sets PR_SET_PDEATHSIG so the command's leader dies with the process that runs it: a worker
# killed with SIGKILL cannot clean up, and the leader must not run on without it.
_SETPRIV = shutil.which("setpriv")


class StopReason(StrEnum):
    CANCELLED = "cancelled"
    WORKER_LOST = "worker_lost"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True)
class CommandSpec:
    argv: Sequence[str]
    env: Mapping[str, str]
    working_dir: str | None = None
    timeout_s: float | None = None


@dataclass
class RunResult:
    status: str  # completed | failed | timeout | cancelled
    exit_code: int | None
    error: str | None
    duration_ms: int
    stop_reason: StopReason | None = None
    partial_output: str = ""
    pid: int | None = None


@dataclass
class _Tail:
    """The last `limit` characters of output, for execution_cancelled.partialOutput."""

    limit: int
    parts: deque[str] = field(default_factory=deque)
    size: int = 0

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)
        while self.size - len(self.parts[0]) >= self.limit:
            self.size -= len(self.parts.popleft())

    def text(self) -> str:
        joined = "".join(self.parts)
        return joined[-self.limit :] if len(joined) > self.limit else joined


class Executor:
    def __init__(
        self,
        spec: CommandSpec,
        emit: Callable[[Stream, str], None],
        *,
        masker: Masker | None = None,
        flush_interval_ms: int = 20,
        max_chunk_bytes: int = 64 * 1024,
        kill_grace_s: float = 5.0,
        partial_output_chars: int = 1024 * 1024,
        on_start: Callable[[int], None] | None = None,
    ) -> None:
        self.spec = spec
        self._emit_cb = emit
        self._tail = _Tail(partial_output_chars)
        self._coalescer = OutputCoalescer(
            self._emit,
            flush_interval_ms=flush_interval_ms,
            max_chunk_bytes=max_chunk_bytes,
            masker=masker,
        )
        self._grace_s = kill_grace_s
        self._on_start = on_start
        self._stop_reason: StopReason | None = None
        self._session_empty = False  # seen empty after the leader ended
        self.reads = 0  # reads of the command's pipes (holding keeps this low; see _pump)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.proc: subprocess.Popen[bytes] | None = None

    def _emit(self, stream: Stream, text: str) -> None:
        self._tail.add(text)
        self._emit_cb(stream, text)

    # -- control ------------------------------------------------------------------------
    def request_stop(self, reason: StopReason = StopReason.CANCELLED) -> None:
        """Ask the run to stop: kill the command's tree and end. Async-signal-safe."""
        if self._stop_reason is None:
            self._stop_reason = reason
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    # -- the run --------------------------------------------------------------------------
    def run(self) -> RunResult:
        t0 = time.monotonic()
        start_error = self._start()
        if start_error is not None:
            if self._stop_reason is not None:
                # Stopped before the command started (a cancel between two attempts of a step).
                return self._stopped(self._stop_reason, None, t0, "", None)
            return RunResult("failed", None, start_error, _ms(t0))
        assert self.proc is not None
        if self._on_start is not None:
            self._on_start(self.proc.pid)
        timed_out = self._pump(t0)
        return self._finish(t0, timed_out)

    def close(self) -> None:
        """Release the wake-up pipe. Only once nothing can call request_stop() any more
        (watchdog joined, signal handler restored): a late write must not hit a reused fd."""
        if self._wake_r >= 0:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    def _start(self) -> str | None:
        spec = self.spec
        if spec.working_dir is not None and not os.path.isdir(spec.working_dir):
            return f"working directory does not exist: {spec.working_dir}"
        if self._stop_reason is not None:
            return "stopped before start"
        argv = list(spec.argv)
        if shutil.which(argv[0], path=spec.env.get("PATH", os.defpath)) is None:
            return f"command not found: {argv[0]}"
        if _SETPRIV is not None:
            argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=spec.working_dir,
                env=dict(spec.env),
                start_new_session=True,
                close_fds=True,
            )
        except FileNotFoundError:
            return f"command not found: {spec.argv[0]}"
        except PermissionError:
            return f"permission denied: {spec.argv[0]}"
        except OSError as e:
            return f"could not start {spec.argv[0]}: {e.strerror or e}"
        return None

    def _pump(self, t0: float) -> bool:
        """Read both pipes until EOF; enforce the deadline and stop requests. True on timeout.

        Holding keeps the relative order of stdout and stderr as well as reading at every
        write does: while one stream is held the other stays polled, and the moment it has
        data the held stream is read first. Only bytes written within one wake-up's latency
        are ambiguous, as without holding.
        """
        proc = self.proc
        assert proc is not None and proc.stdout is not None and proc.stderr is not None
        sel = selectors.DefaultSelector()
        streams: dict[int, Stream] = {
            proc.stdout.fileno(): "stdout",
            proc.stderr.fileno(): "stderr",
        }
        for fd in streams:
            os.set_blocking(fd, False)
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
            sel.register(fd, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        pidfd = _pidfd(proc.pid)
        if pidfd is not None:
            sel.register(pidfd, selectors.EVENT_READ)
        deadline = None if self.spec.timeout_s is None else t0 + self.spec.timeout_s
        timed_out = False
        kill_at: float | None = None  # when SIGTERM was sent: SIGKILL at this time
        leader_done = False
        # A process that left the session (setsid) may hold our pipes after the leader died;
        # we stop waiting for its EOF this long after the leader's end.
        give_up_at: float | None = None
        pipes = _Pipes(sel, streams, self._read, self._coalescer.interval_s)
        leader_exited = pidfd is None  # unknown without a pidfd: ask waitpid every time
        try:
            while pipes.open:
                now = time.monotonic()
                may_hold = kill_at is None and not leader_done and self._stop_reason is None
                if pipes.held and not may_hold:
                    pipes.read_held()
                    continue
                waits = [
                    self._coalescer.deadline(),
                    None if timed_out or self._stop_reason else deadline,
                    kill_at,
                    None if pidfd is not None or leader_done else now + 0.05,
                    give_up_at,
                    pipes.hold_due(),
                ]
                nearest = min((w for w in waits if w is not None), default=None)
                timeout = None if nearest is None else max(0.0, nearest - now)
                ready: list[int] = []
                for key, _ in sel.select(timeout):
                    fd = int(key.fd)
                    if fd in streams:
                        ready.append(fd)
                    elif fd == self._wake_r:
                        _drain(fd)
                    elif fd == pidfd:
                        sel.unregister(fd)
                        os.close(fd)
                        pidfd = None
                        leader_exited = True
                pipes.take(ready, time.monotonic(), may_hold)
                now = time.monotonic()
                hold_due = pipes.hold_due()
                if hold_due is not None and (self._coalescer.due(now) or now >= hold_due):
                    pipes.read_held()
                if self._coalescer.due(now):
                    self._coalescer.flush()
                if give_up_at is not None and now >= give_up_at:
                    break
                # With a pidfd, waitpid only once it said the leader ended: a syscall per
                # wake-up is a tenth of what a chatty command costs us.
                if not leader_done and leader_exited and proc.poll() is not None:
                    leader_done = True
                    give_up_at = now + self._grace_s + 1.0
                    # The leader is gone: whatever it left in its session goes too, now.
                    if kill_at is None:
                        if session_members(proc.pid, None):
                            signal_session(proc.pid, signal.SIGTERM)
                            kill_at = now + min(self._grace_s, 1.0)
                        else:
                            # Only a member can add a member: an empty session stays empty,
                            # and _finish need not scan /proc again (half of a short
                            # command's cost in a worker).
                            self._session_empty = True
                if kill_at is None and (
                    self._stop_reason is not None or (deadline is not None and now >= deadline)
                ):
                    timed_out = self._stop_reason is None
                    signal_session(proc.pid, signal.SIGTERM, proc.pid)
                    kill_at = now + self._grace_s
                elif kill_at is not None and now >= kill_at:
                    signal_session(proc.pid, signal.SIGKILL, proc.pid)
                    kill_at = now + 0.2  # again, for anything forked meanwhile
        finally:
            sel.close()
            if pidfd is not None:
                os.close(pidfd)
        self._coalescer.close(time.monotonic())
        return timed_out

    def _read(self, fd: int, stream: Stream, seen: float) -> int | None:
        """One read: the bytes it brought, None at EOF. `seen`: when they were known to be
        there."""
        try:
            data = os.read(fd, _READ_BYTES)
        except BlockingIOError:
            return 0
        except OSError as e:
            return 0 if e.errno == errno.EINTR else None
        if not data:
            return None
        self.reads += 1
        self._coalescer.feed(stream, data, seen)
        return len(data)

    def _finish(self, t0: float, timed_out: bool) -> RunResult:
        proc = self.proc
        assert proc is not None
        code = proc.wait()
        # The pipes are closed, but a member that closed them may still live: make sure.
        deadline = time.monotonic() + self._grace_s
        while not self._session_empty and session_members(proc.pid):
            if time.monotonic() >= deadline:
                break
            signal_session(proc.pid, signal.SIGKILL)
            time.sleep(0.01)
        exit_code = code if code >= 0 else 128 - code
        reason = self._stop_reason
        partial = self._tail.text()
        if reason is not None:
            return self._stopped(reason, exit_code, t0, partial, proc.pid)
        if timed_out:
            err = f"timed out after {self.spec.timeout_s:g} s"
            return RunResult("timeout", exit_code, err, _ms(t0), None, partial, proc.pid)
        if code == 0:
            return RunResult("completed", 0, None, _ms(t0), None, partial, proc.pid)
        return RunResult("failed", exit_code, _exit_error(code), _ms(t0), None, partial, proc.pid)

    @staticmethod
    def _stopped(
        reason: StopReason, exit_code: int | None, t0: float, partial: str, pid: int | None
    ) -> RunResult:
        if reason is StopReason.CANCELLED:
            return RunResult("cancelled", exit_code, None, _ms(t0), reason, partial, pid)
        if reason is StopReason.WORKER_LOST:
            err = "worker lost: the worker process running this execution died"  # see runner
        else:
            err = "worker shut down while the command ran"
        return RunResult("failed", exit_code, err, _ms(t0), reason, partial, pid)


def _exit_error(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    if code == 127:
        return "command not found (exit 127)"
    if code == 126:
        return "command not executable (exit 126)"
    return f"exit code {code}"


def _ms(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)


class _Pipes:
    """The command's stdout and stderr while the pump reads them: which are still open, and
    the holding of a trickling one (see _TRICKLE_BYTES and Executor._pump)."""

    def __init__(
        self,
        sel: selectors.BaseSelector,
        streams: dict[int, Stream],
        read: Callable[[int, Stream, float], int | None],
        interval_s: float,
    ) -> None:
        self._sel = sel
        self._streams = streams
        self._read = read
        self._interval_s = interval_s
        self.open = set(streams)
        self.held: dict[int, float] = {}  # fd -> when it was seen readable, left unread
        self._trickles = dict.fromkeys(streams, False)

    def hold_due(self) -> float | None:
        """When the held stream must be read, or None."""
        return min(self.held.values()) + self._interval_s if self.held else None

    def take(self, ready: list[int], seen: float, may_hold: bool) -> None:
        """Streams the poll found readable at `seen`: hold the one trickling stream, or read."""
        if not ready:
            return
        fd = ready[0]
        if may_hold and len(ready) == 1 and not self.held and self._trickles[fd]:
            self.held[fd] = seen
            self._sel.unregister(fd)
            return
        self.read_held()  # what was held came before what is ready now
        for fd in ready:
            self._read_one(fd, seen)

    def read_held(self) -> None:
        for fd, seen in sorted(self.held.items(), key=lambda kv: kv[1]):
            self._read_one(fd, seen)  # while still held: its fd is out of the poll set
            del self.held[fd]
            if fd in self.open:
                self._sel.register(fd, selectors.EVENT_READ)

    def _read_one(self, fd: int, seen: float) -> None:
        n = self._read(fd, self._streams[fd], seen)
        if n is None:
            self.open.discard(fd)
            if fd not in self.held:
                self._sel.unregister(fd)
        elif n:
            self._trickles[fd] = n < _TRICKLE_BYTES


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
