"""Test helpers shared by every suite: waiting with a timeout, processes, events."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]


def wait_until(
    predicate: Callable[[], T], timeout_s: float = 10.0, interval_s: float = 0.02, what: str = ""
) -> T:
    """Poll `predicate` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what or predicate}")
        time.sleep(interval_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cloudops_argv(*args: str) -> list[str]:
    """Run the `cloudops` CLI of this checkout with the test's interpreter."""
    return [sys.executable, "-c", "from api.cli import main; main()", *args]


def venv_path_env(env: dict[str, str]) -> dict[str, str]:
    """PATH with this interpreter's bin first, so `aws` and `cloudops` resolve."""
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", os.defpath)
    return env


def live_pids_with(marker: str) -> list[int]:
    """Processes (not zombies) whose command line contains `marker`, read from /proc."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        state = stat[stat.rfind(b")") + 2 :].split()[0]
        if marker in cmdline and state not in (b"Z", b"X"):
            found.append(int(name))
    return found


@dataclass
class ManagedProcess:
    """A process started by a test, in its own session so that its whole tree can be killed."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_log(self, text: str, timeout_s: float = 30.0) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited early:\n{self.log()[-3000:]}")
            return text in self.log()

        wait_until(seen, timeout_s, 0.05, what=f"{text!r} in the log of {self.name}")

    def kill_tree(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (warm shutdown), then SIGKILL the whole tree."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout_s)
        self.kill_tree()


def start_process(
    argv: list[str], env: dict[str, str], log_path: Path, name: str = ""
) -> ManagedProcess:
    log = open(log_path, "wb")  # noqa: SIM115 - handed to the child, closed with it
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=REPO,
    )
    log.close()
    return ManagedProcess(proc, log_path, name or argv[-1])


def payloads(events: Iterable[Any], name: str | None = None) -> list[dict[str, Any]]:
    """The payloads of RawEvents (optionally only those named `name`)."""
    out = []
    for ev in events:
        if name is None or ev.event == name:
            out.append(json.loads(ev.data)["payload"])
    return out


def output_of(events: Iterable[Any], stream: str | None = None) -> str:
    return "".join(
        p["output"] for p in payloads(events, "execution_output") if stream in (None, p["stream"])
    )


class PrivateRedis:
    """A redis-server on its own port and directory. With `persistent`, every write is in the
    AOF (fsync always) before Redis acknowledges it, so a restart, even after SIGKILL, loses
    nothing that was acknowledged."""

    def __init__(self, tmp: Path, *, persistent: bool = True) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tmp / f"redis-{self.port}"
        self.dir.mkdir()
        self.persistent = persistent
        self.proc: ManagedProcess | None = None
        self.starts = 0
        self.paused = False

    def start(self) -> None:
        assert self.proc is None
        self.starts += 1
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--dir", str(self.dir), "--maxclients", "2000"]
        if self.persistent:
            argv += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            argv += ["--appendonly", "no"]
        self.proc = start_process(
            argv, dict(os.environ), self.dir / f"server-{self.starts}.log", name="redis-server"
        )
        probe = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=2)
        try:

            def up() -> bool:
                assert self.proc is not None and self.proc.proc.poll() is None, self.log()
                try:
                    # LOADING while the AOF is read back: not up yet.
                    return bool(probe.ping())
                except (redis.ConnectionError, redis.BusyLoadingError):
                    return False

            wait_until(up, 20.0, 0.02, what="the private redis-server to answer")
        finally:
            probe.close()

    def kill(self) -> None:
        """SIGKILL: a crash; with `persistent` the AOF keeps every acknowledged write."""
        if self.proc is not None:
            self.proc.kill_tree()
            self.proc = None
            self.paused = False

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def log(self) -> str:
        return self.proc.log() if self.proc else ""
