"""`bus-archiving` (issue 15): the `bus` row's `seq` through coalescer, publisher and Redis to
a subscriber, while an archiver (as the relay runs it: `Archiver.run_forever`, a pass a second)
copies the same prefix into a scratch PostgreSQL from another process, beside the raw pipe
read rate, alternately, median of 5. Target >= 0.4x the raw pipe, as the bus row's.
"""

from __future__ import annotations

import subprocess
import sys

from events.settings import Settings
from tests.benchmarks.archive import scratch_database
from tests.benchmarks.core import Context, Figure, row
from tests.benchmarks.throughput import (
    SEQ_LINES,
    SEQ_LINES_QUICK,
    TARGET_VS_PIPE,
    bus_once,
    interleaved,
)

# The archiver's loop in a process of its own, until its stdin closes.
_CHILD = """
import sys, threading, redis
from events.db.archive import Archiver
from events.db.engine import make_engine
from events.keys import Keys
redis_url, prefix, db_url = sys.argv[1:]
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
Archiver(redis.Redis.from_url(redis_url), Keys(prefix), make_engine(db_url)).run_forever(stop)
"""


@row("bus-archiving", issue=15, title="event bus throughput with the archiver running")
def bus_archiving_row(ctx: Context) -> list[Figure]:
    lines = ctx.pick(SEQ_LINES, SEQ_LINES_QUICK)
    repeats = ctx.pick(5, 1)
    prefix = ctx.key_prefix("busarch")
    settings = Settings(redis_url=ctx.redis_url, key_prefix=prefix)
    with scratch_database("busarch") as engine:
        url = engine.url.render_as_string(hide_password=False)
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, ctx.redis_url, prefix, url], stdin=subprocess.PIPE
        )
        try:
            ours, pipe = interleaved(
                ctx, lines, repeats, lambda: bus_once(ctx, lines, settings=settings)
            )
        finally:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(30)
    ctx.throughput_mb_s["bus, archiving on"] = ours
    return [
        Figure(
            "bus throughput with archiving on vs raw pipe",
            "MB/s",
            ours,
            pipe,
            "raw pipe read",
            target=TARGET_VS_PIPE,
            note=f"seq {lines}, median of {repeats}; archiver in another process, a pass a second",
        )
    ]
