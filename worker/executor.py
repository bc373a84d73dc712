"""Run one command: start it under its guard, pump its pipes, enforce its deadline, finish.

The executor knows nothing of Celery or Redis: output goes to an `emit(stream, text)` callback
(through the coalescer), and a cancel arrives through `request_stop()`, which is safe to call
from a signal handler or another thread. Whatever the outcome, the pipes are drained to EOF
and every process the command started is dead before `run()` returns (worker/guard.py; without
the guard, every process of its session: worker/proctree.py).
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
from worker.guard import SERVER, LaunchAborted
from worker.pipes import Pipes
from worker.proctree import CommandTree, SessionTree

_READ_BYTES = 256 * 1024
# Bigger pipes (best effort) so that a held stream that suddenly bursts does not block its
# writer before the hold ends.
_PIPE_BYTES = 1024 * 1024
_F_SETPIPE_SZ = 1031
# Without the guard: sets PR_SET_PDEATHSIG so the command's leader dies with the process that
# runs it (a worker killed with SIGKILL cannot clean up, and the leader must not run on).
_SETPRIV = shutil.which("setpriv")


# A run stopped before its command started (between two attempts, or while a fan-out step's
# hosts waited for each other).
STOPPED_BEFORE_START = "stopped before start"


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


@dataclass(slots=True)
class _PumpState:
    """Where the pump stands with the command's end: its deadline, the leader's pidfd and exit,
    the kill escalation."""

    deadline: float | None  # the timeout, on the monotonic clock
    exit_fd: int | None  # the leader's pidfd until it said the leader ended
    leader_exited: bool  # the pidfd said so (True throughout without one: ask waitpid)
    leader_done: bool = False  # waitpid confirmed it
    give_up_at: float | None = None  # stop waiting for EOF of what left the session
    kill_at: float | None = None  # SIGTERM was sent: SIGKILL at this time
    timed_out: bool = False

    def may_hold(self, stopping: bool) -> bool:
        """Whether a trickling stream may be held (never while the command is being ended)."""
        return self.kill_at is None and not self.leader_done and not stopping

    def timeout(
        self, now: float, flush_at: float | None, hold_due: float | None, stopping: bool
    ) -> float | None:
        """How long the poll may sleep: until the nearest thing due, or for ever."""
        waits = [
            flush_at,
            None if self.timed_out or stopping else self.deadline,
            self.kill_at,
            None if self.exit_fd is not None or self.leader_done else now + 0.05,
            self.give_up_at,
            hold_due,
        ]
        nearest = min((w for w in waits if w is not None), default=None)
        return None if nearest is None else max(0.0, nearest - now)


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
        on_start: Callable[[CommandTree], None] | None = None,
        on_end: Callable[[], None] | None = None,
        guard: bool = True,
        output_idle: Callable[[], bool] | None = None,
        before_spawn: Callable[[], None] | None = None,
    ) -> None:
        self.spec = spec
        # Called when everything but the command's own start is done (pipes made, its guard
        # forked): a fan-out step's start barrier waits there, so what is left after it is
        # the start alone (worker/playbook/fanout.py).
        self._before_spawn = before_spawn
        # Nothing of the execution's output is in flight (Publisher.output_idle): sparse
        # output then goes out at once (events/coalescer.py). Without it: the fixed window.
        self._idle = output_idle or _never
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
        self._on_end = on_end
        self._guard = guard
        self._stop_reason: StopReason | None = None
        self.reads = 0  # reads of the command's pipes (holding keeps this low; see _pump)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.tree: CommandTree | None = None
        self._out: tuple[int, int] = (-1, -1)  # the read ends of stdout and stderr

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
        tree = self.tree
        assert tree is not None
        try:
            try:
                if self._on_start is not None:
                    self._on_start(tree)
                timed_out = self._pump(t0)
            except BaseException:
                # Whatever went wrong here, the command must not outlive its run.
                tree.signal(signal.SIGKILL)
                tree.end(self._grace_s)
                raise
            return self._finish(t0, timed_out)
        finally:
            for fd in self._out:
                os.close(fd)
            if self._on_end is not None:
                self._on_end()

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
            return STOPPED_BEFORE_START
        argv = list(spec.argv)
        if shutil.which(argv[0], path=spec.env.get("PATH", os.defpath)) is None:
            return f"command not found: {argv[0]}"
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            self.tree = self._launch(argv, out_w, err_w)
        except BaseException as e:
            for fd in (out_r, err_r):
                os.close(fd)
            if isinstance(e, LaunchAborted):
                return STOPPED_BEFORE_START
            if isinstance(e, OSError):
                return self._start_error(e)
            raise
        finally:
            for fd in (out_w, err_w):
                os.close(fd)
        self._out = (out_r, err_r)
        return None

    def _launch(self, argv: list[str], out_w: int, err_w: int) -> CommandTree:
        spec = self.spec
        if self._guard:
            return SERVER.launch(argv, spec.env, spec.working_dir, out_w, err_w, ready=self._ready)
        if not self._ready():
            raise LaunchAborted
        if _SETPRIV is not None:
            argv = [_SETPRIV, "--pdeathsig", "KILL", "--", *argv]
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            cwd=spec.working_dir,
            env=dict(spec.env),
            start_new_session=True,
            close_fds=True,
        )
        return SessionTree(proc)

    def _ready(self) -> bool:
        """The last moment before the command starts: `before_spawn`, then whether to go on
        (a stop request may have come meanwhile)."""
        if self._before_spawn is not None:
            self._before_spawn()
        return self._stop_reason is None

    def _start_error(self, e: OSError) -> str:
        argv0 = self.spec.argv[0]
        if isinstance(e, FileNotFoundError):
            return f"command not found: {argv0}"
        if isinstance(e, PermissionError):
            return f"permission denied: {argv0}"
        return f"could not start {argv0}: {e.strerror or e}"

    def _pump(self, t0: float) -> bool:
        """Read both pipes until EOF; enforce the deadline and stop requests. True on timeout.

        Holding keeps the relative order of stdout and stderr as well as reading at every
        write does: while one stream is held the other stays polled, and the moment it has
        data the held stream is read first. Only bytes written within one wake-up's latency
        are ambiguous, as without holding.
        """
        tree = self.tree
        assert tree is not None
        sel = selectors.DefaultSelector()
        streams: dict[int, Stream] = {self._out[0]: "stdout", self._out[1]: "stderr"}
        for fd in streams:
            os.set_blocking(fd, False)
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BYTES)
            sel.register(fd, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        exit_fd = tree.exit_fd()
        if exit_fd is not None:
            sel.register(exit_fd, selectors.EVENT_READ)
        st = _PumpState(
            deadline=None if self.spec.timeout_s is None else t0 + self.spec.timeout_s,
            exit_fd=exit_fd,
            # Unknown without a pidfd: ask waitpid at every wake-up.
            leader_exited=exit_fd is None,
        )
        pipes = Pipes(sel, streams, self._read, self._coalescer.interval_s)
        try:
            while pipes.open:
                now = time.monotonic()
                idle = self._idle()
                stopping = self._stop_reason is not None
                may_hold = st.may_hold(stopping)
                if pipes.held and not may_hold:
                    pipes.read_held()
                    continue
                flush_at = self._coalescer.deadline(idle)
                timeout = st.timeout(now, flush_at, pipes.hold_due(), stopping)
                ready: list[int] = []
                for key, _ in sel.select(timeout):
                    fd = int(key.fd)
                    if fd in streams:
                        ready.append(fd)
                    elif fd == self._wake_r:
                        _drain(fd)
                    elif fd == st.exit_fd and tree.readable():
                        sel.unregister(fd)
                        st.exit_fd = None
                        st.leader_exited = True
                seen = time.monotonic()
                idle = self._idle()
                # What would go out at once is read at once: holding it would only delay it.
                may_hold = may_hold and not self._coalescer.at_once(seen, idle)
                pipes.take(ready, seen, may_hold)
                now = time.monotonic()
                hold_due = pipes.hold_due()
                if hold_due is not None and (self._coalescer.due(now, idle) or now >= hold_due):
                    pipes.read_held()
                if self._coalescer.due(now, idle):
                    self._coalescer.flush(now)
                if st.give_up_at is not None and now >= st.give_up_at:
                    break
                self._check_leader(tree, st, now)
                self._escalate(tree, st, now)
        finally:
            sel.close()
        self._coalescer.close(time.monotonic())
        return st.timed_out

    def _check_leader(self, tree: CommandTree, st: _PumpState, now: float) -> None:
        """Once the leader ended: stop waiting for EOF a grace period later, and end whatever
        it left running. With a pidfd, waitpid only once it said the leader ended: a syscall
        per wake-up is a tenth of what a chatty command costs us."""
        if st.leader_done or not st.leader_exited or tree.poll() is None:
            return
        st.leader_done = True
        # A process that left the session (setsid) may hold our pipes after the leader died.
        st.give_up_at = now + self._grace_s + 1.0
        if st.kill_at is None and tree.leftovers():
            tree.signal(signal.SIGTERM)
            st.kill_at = now + min(self._grace_s, 1.0)

    def _escalate(self, tree: CommandTree, st: _PumpState, now: float) -> None:
        """SIGTERM the tree on a stop request or at the deadline, SIGKILL it after the grace
        period (again every 0.2 s, for anything forked meanwhile)."""
        if st.kill_at is None and (
            self._stop_reason is not None or (st.deadline is not None and now >= st.deadline)
        ):
            tree.signal(signal.SIGTERM)
            st.kill_at = now + self._grace_s
            st.timed_out = self._stop_reason is None
        elif st.kill_at is not None and now >= st.kill_at:
            tree.signal(signal.SIGKILL)
            st.kill_at = now + 0.2

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
        tree = self.tree
        assert tree is not None
        code = tree.wait()
        tree.end(self._grace_s)
        pid = tree.pid
        exit_code = code if code >= 0 else 128 - code
        reason = self._stop_reason
        partial = self._tail.text()
        if reason is not None:
            return self._stopped(reason, exit_code, t0, partial, pid)
        if timed_out:
            err = f"timed out after {self.spec.timeout_s:g} s"
            return RunResult("timeout", exit_code, err, _ms(t0), None, partial, pid)
        if code == 0:
            return RunResult("completed", 0, None, _ms(t0), None, partial, pid)
        return RunResult("failed", exit_code, _exit_error(code), _ms(t0), None, partial, pid)

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


def _never() -> bool:
    return False


def _ms(t0: float) -> int:
    return int((time.monotonic() - t0) * 1000)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass
