"""The command every fault test runs: deterministic chatty output, each line also kept in a file.

    python -u chatty.py MARKER OUT_DIR [--seconds S] [--interval-ms I] [--burst B]
                        [--stderr-every K] [--go FILE] [--ignore-term]

Every I ms it prints B lines (every K-th line also on stderr), for S seconds; with --go it waits
for FILE to exist first (so that many commands can start before any of them loads the host);
with --ignore-term SIGTERM does not stop it (only SIGKILL does).
Each batch is written to OUT_DIR/stdout (OUT_DIR/stderr) *before* it goes to the pipe, each with
one write(2) and no buffering: whatever the worker streamed is then a prefix of the file even if
the command is killed between the two writes, and equal to it if the command ends normally.
Lines carry multi-byte UTF-8 (2, 3 and 4 bytes) so that a chunk boundary inside a character
would show. MARKER only has to be in the command line: the tests find the command's processes
by it.
"""

from __future__ import annotations

import argparse
import os
import signal
import time

_FILLER = "abcdefghijklmnopqrstuvwxyz0123456789"


def line(i: int) -> bytes:
    """Line i, the same in every run; 40-90 bytes, with é (2), ✓ (3) and 𝄞 (4 bytes)."""
    width = 10 + (i * 7919) % 40
    text = _FILLER[i % 17 :] + _FILLER
    return f"{i:07d} é{text[:width]}✓ 𝄞{i % 10}\n".encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("marker")
    parser.add_argument("out_dir")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--interval-ms", type=float, default=10.0)
    parser.add_argument("--burst", type=int, default=1)
    parser.add_argument("--stderr-every", type=int, default=10)
    parser.add_argument("--go")
    parser.add_argument("--ignore-term", action="store_true")
    args = parser.parse_args()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if args.go:
        give_up = time.monotonic() + 300
        while not os.path.exists(args.go) and time.monotonic() < give_up:
            time.sleep(0.05)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    out = os.open(os.path.join(args.out_dir, "stdout"), flags, 0o644)
    err = os.open(os.path.join(args.out_dir, "stderr"), flags, 0o644)
    interval_s = args.interval_ms / 1000
    start = time.monotonic()
    deadline = start + args.seconds
    i = tick = 0
    while True:
        lines = [line(i + k) for k in range(args.burst)]
        data = b"".join(lines)
        os.write(out, data)
        os.write(1, data)
        every = args.stderr_every
        data = b"".join(b"E" + x for k, x in enumerate(lines) if every and (i + k) % every == 0)
        if data:
            os.write(err, data)
            os.write(2, data)
        i += args.burst
        tick += 1
        # Paced against the start, not the previous batch, so a slow pipe does not stretch it.
        wake = start + tick * interval_s
        if wake >= deadline:
            break
        time.sleep(max(0.0, wake - time.monotonic()))


if __name__ == "__main__":
    main()
