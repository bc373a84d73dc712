"""The CLI under a real pseudo-terminal: output is live, and Ctrl-C cancels."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import subprocess
import termios
import time
import uuid

from tests.helpers import REPO, cloudops_argv, embedded_env, live_pids_with, wait_until


def _take_controlling_terminal() -> None:
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """A child process on a pty; `screen` is everything it has written so far."""

    def __init__(self, argv: list[str]) -> None:
        master, slave = pty.openpty()
        self.master = master
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=embedded_env(),
            cwd=REPO,
            # A session of its own whose controlling terminal is the pty, as in a real shell.
            start_new_session=True,
            preexec_fn=_take_controlling_terminal,
        )
        os.close(slave)
        self.screen = b""

    def read(self, timeout_s: float = 0.05) -> bytes:
        ready, _, _ = select.select([self.master], [], [], timeout_s)
        if ready:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return b""
            self.screen += data
            return data
        return b""

    def wait_for(self, text: bytes, timeout_s: float) -> float:
        deadline = time.monotonic() + timeout_s
        while text not in self.screen:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not on screen: {self.screen!r}")
            self.read()
        return time.monotonic()

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.master)


def test_first_line_is_on_screen_before_the_sleep_ends() -> None:
    term = Terminal(cloudops_argv("run", "--", "echo first-line; sleep 2; echo second-line"))
    try:
        term.wait_for(b"[cloudops] execution", 30)
        t_start = time.monotonic()
        t_first = term.wait_for(b"first-line", 5)
        t_second = term.wait_for(b"second-line", 10)
        # The first line arrives while the command sleeps, long before the second.
        assert t_second - t_first > 1.5
        assert t_first - t_start < 1.0
        while term.proc.poll() is None:
            term.read()
        assert term.proc.returncode == 0
    finally:
        term.close()


def test_ctrl_c_cancels_the_execution_and_leaves_no_process() -> None:
    marker = f"300.{uuid.uuid4().int % 10**8:08d}"
    term = Terminal(
        cloudops_argv("run", "--", f"echo ready; (sleep {marker}1 &); sleep {marker}2; echo never")
    )
    try:
        term.wait_for(b"ready", 30)
        wait_until(lambda: len(live_pids_with(marker)) >= 3, 10, what="the command's processes")
        os.write(term.master, b"\x03")  # Ctrl-C: the terminal sends SIGINT to the CLI
        deadline = time.monotonic() + 15
        while term.proc.poll() is None and time.monotonic() < deadline:
            term.read()
        assert term.proc.returncode == 130, term.screen
        assert b"cancelled" in term.screen
        assert b"never" not in term.screen
        assert live_pids_with(marker) == []
    finally:
        term.close()
