"""A chatty command: one line every `interval_ms` for `duration_s`, each starting with
time.time_ns() taken just before its write, padded to `line_bytes`.

    python -u chatty.py DURATION_S [INTERVAL_MS [LINE_BYTES [GO_FILE]]]

With GO_FILE it creates GO_FILE.ready.<pid> once started, then waits for GO_FILE to exist
before the first line, so that clients can be connected, or every command started, before any
output. Each line is one write(2), so whoever reads the pipe sees it as
soon as it is written. The schedule is absolute (no drift): a late wake-up is followed by a
shorter sleep.
"""

from __future__ import annotations

import os
import sys
import time


def main(duration_s: float, interval_ms: float, line_bytes: int, go_file: str | None) -> None:
    if go_file:
        # Say we are up (interpreter started), wait for the go, then take the marker back.
        ready = f"{go_file}.ready.{os.getpid()}"
        open(ready, "w").close()
        while not os.path.exists(go_file):
            time.sleep(0.005)
        os.unlink(ready)
    interval_ns = int(interval_ms * 1_000_000)
    start = time.monotonic_ns()
    end = start + int(duration_s * 1e9)
    tick = start
    while tick < end:
        stamp = b"%d" % time.time_ns()
        pad = max(0, line_bytes - len(stamp) - 1)
        os.write(1, stamp + (b" " + b"x" * (pad - 1) if pad > 1 else b"") + b"\n")
        tick += interval_ns
        delay_ns = tick - time.monotonic_ns()
        if delay_ns > 0:
            time.sleep(delay_ns / 1e9)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(
        float(a[0]),
        float(a[1]) if len(a) > 1 else 1.0,
        int(a[2]) if len(a) > 2 else 0,
        a[3] if len(a) > 3 else None,
    )
