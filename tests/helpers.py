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
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import redis

if TYPE_CHECKING:
    from events.lifecycle import Reporter
    from events.record_store import RecordStore
    from events.vocabulary import CommandType

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


def wait_task_disposed(
    worker: ManagedProcess, task_name: str, task_id: str, timeout_s: float = 20.0
) -> None:
    """A worker received a task and refused it: revoked, or our claim said it was cancelled."""
    wait_until(
        lambda: (
            f"revoked task: {task_name}[{task_id}]" in worker.log()
            or f"[{task_id}] succeeded" in worker.log()
        ),
        timeout_s,
        what=f"{worker.name} to dispose of {task_id}",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cloudops_argv(*args: str, preload: str | None = None) -> list[str]:
    """Run the `cloudops` CLI of this checkout with the test's interpreter; `preload`: a module
    imported first (a benchmark's extra task on the worker's app)."""
    code = "from cli.main import main; main()"
    if preload:
        code = f"import {preload}; {code}"
    return [sys.executable, "-c", code, *args]


def run_cloudops(
    *args: str, env: dict[str, str], timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """`cloudops ARGS` run to its end in this checkout, its output captured as text."""
    return subprocess.run(
        cloudops_argv(*args), env=env, capture_output=True, text=True, timeout=timeout_s, cwd=REPO
    )


def http_status(url: str, timeout_s: float = 1.0) -> int | None:
    """The status `GET url` answers with; None while nothing answers (not up yet, gone)."""
    try:
        return httpx.get(url, timeout=timeout_s).status_code
    except httpx.HTTPError:
        return None


def venv_path_env(env: dict[str, str]) -> dict[str, str]:
    """PATH with this interpreter's bin first, so `aws` and `cloudops` resolve."""
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", os.defpath)
    return env


def connection_env(settings: Any) -> dict[str, str]:
    """The CLOUDOPS_* variables that point a process at the settings' Redis (directly or
    through its sentinels) and broker, on its key prefix."""
    env = {"CLOUDOPS_KEY_PREFIX": settings.key_prefix}
    if settings.redis_url:
        env["CLOUDOPS_REDIS_URL"] = settings.redis_url
    if settings.redis_sentinels:
        env["CLOUDOPS_REDIS_SENTINELS"] = ",".join(settings.redis_sentinels)
        env["CLOUDOPS_REDIS_SENTINEL_MASTER"] = settings.redis_sentinel_master
    if settings.redis_min_replicas:
        env["CLOUDOPS_REDIS_MIN_REPLICAS"] = str(settings.redis_min_replicas)
    if settings.broker_url:
        env["CLOUDOPS_BROKER_URL"] = settings.broker_url
    assert "CLOUDOPS_REDIS_URL" in env or settings.redis_sentinels, "no Redis in the settings"
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


def stop_all(procs: Iterable[ManagedProcess], timeout_s: float = 15.0) -> None:
    """`ManagedProcess.stop` of every one at once: all are sent SIGTERM first, so that many
    warm shutdowns take as long as the slowest, not as their sum."""
    procs = list(procs)
    for p in procs:
        if p.proc.poll() is None:
            p.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.proc.wait(max(0.0, deadline - time.monotonic()))
        p.kill_tree()


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


def assert_one_output_per_step(events: list[Any], *, steps: int) -> None:
    """A playbook whose every step printed once: started, per step its start, one output and
    its complete, then complete; ids 1..n; every envelope valid against the models."""
    from events.models import decode

    assert [e.event for e in events] == [
        "execution_started",
        *(["playbook_step_start", "execution_output", "playbook_step_complete"] * steps),
        "execution_complete",
    ]
    assert [e.id for e in events] == list(range(1, 3 * steps + 3))
    for e in events:
        decode(e.data)


def output_of(events: Iterable[Any], stream: str | None = None) -> str:
    return "".join(
        p["output"] for p in payloads(events, "execution_output") if stream in (None, p["stream"])
    )


class ThreadFollower:
    """A Follower run in a thread, keeping what it yields; started at once."""

    def __init__(self, follower: Any, *, on_close: Callable[[], None] | None = None) -> None:
        self.follower = follower
        self.events: list[Any] = []
        self.error: BaseException | None = None
        self._on_close = on_close
        name = f"follow-{follower.execution_id}"
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for ev in self.follower:
                self.events.append(ev)
        except BaseException as e:  # reported by join()
            self.error = e

    def join(self, timeout_s: float = 30.0, *, must_end: bool = False) -> list[Any]:
        """What it got; stopped after `timeout_s` (an AssertionError with `must_end`)."""
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            self.follower.stop()
            self.thread.join(5.0)
            if must_end:
                raise AssertionError(
                    f"follower did not end within {timeout_s} s; last id {self.follower.last_id}"
                )
        if self.error is not None:
            raise AssertionError(f"follower of {self.follower.execution_id} failed") from self.error
        return self.events

    def close(self) -> None:
        self.follower.stop()
        self.thread.join(5.0)
        if self._on_close is not None:
            self._on_close()


def worker_env(settings: Any, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a `cloudops worker` on these settings: this one's, without its
    CLOUDOPS_ variables, with the settings' Redis (or sentinels) and broker."""
    env = {
        k: v for k, v in venv_path_env(dict(os.environ)).items() if not k.startswith("CLOUDOPS_")
    }
    env.update(connection_env(settings))
    env.update(
        {
            "CLOUDOPS_KEY_PREFIX": settings.key_prefix,
            "CLOUDOPS_KILL_GRACE_S": str(settings.kill_grace_s),
            "CLOUDOPS_LEASE_TTL_S": str(settings.lease_ttl_s),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def embedded_env() -> dict[str, str]:
    """This environment without any CLOUDOPS_ variable: `cloudops` runs embedded."""
    env = venv_path_env(dict(os.environ))
    for name in list(env):
        if name.startswith("CLOUDOPS_"):
            del env[name]
    return env


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


from cli.wiring import fleet  # noqa: E402
from events.models import WireModel, utc_now  # noqa: E402
from events.wire import encode  # noqa: E402
from worker.dispatcher import Dispatcher  # noqa: E402


class CeleryDispatcher(Dispatcher):
    """The fleet's dispatcher as the tests build it: Celery tasks, records in the test's
    Redis (cli.wiring.fleet)."""

    def __init__(self, settings: Any) -> None:
        parts = fleet(settings)
        super().__init__(parts.runtime, parts.dispatcher.tasks)

    @property
    def app(self) -> Any:
        return self.tasks.app  # type: ignore[attr-defined]


def queued_record(
    records: RecordStore,
    execution_id: str,
    command_type: CommandType,
    spec: Any,
    command: str = "?",
    **more: Any,
) -> None:
    """A record queued now without options, as a task or a notification finds it: its `spec`
    (any object: a test may give a malformed one); `more`, RecordStore.create's others."""
    records.create(
        execution_id,
        command=command,
        command_type=command_type,
        options={},
        queued_at=utc_now(),
        spec=spec,
        **more,
    )


def publish_passing_step(
    reporter: Reporter,
    number: int,
    total: int,
    step: tuple[str, str, str],
    lines: Iterable[str],
    duration_ms: int,
) -> None:
    """A playbook step (id, name, command) that prints `lines` on stdout and succeeds at its
    first attempt, as a worker reports it."""
    step_id, step_name, command = step
    reporter.step_start(
        step_id=step_id,
        step_number=number,
        total_steps=total,
        step_name=step_name,
        command=command,
        attempt=1,
    )
    for line in lines:
        reporter.output("stdout", line)
    reporter.step_complete(
        step_id=step_id,
        step_number=number,
        step_name=step_name,
        success=True,
        exit_code=0,
        duration_ms=duration_ms,
        error=None,
        continue_on_error=False,
        attempts=1,
    )


def encode_parts(event: str, execution_id: str, payload: WireModel) -> tuple[bytes, bytes]:
    """An envelope's bytes split around its `id` (events.wire.Encoded), as a test writes one:
    `head + b"<id>" + tail` is the whole envelope."""
    e = encode(event, execution_id, payload)
    return e.head, e.tail()
