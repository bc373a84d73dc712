"""An archiver in a process of its own, for the crash and concurrency tests: archives until a
pass finds nothing due, in tiny transactions (so that a kill lands inside one), then prints
its totals as one JSON line.

python -m tests.db.archive_child REDIS_URL KEY_PREFIX DATABASE_URL
"""

from __future__ import annotations

import dataclasses
import json
import sys

import redis

from events.db.archive import ArchiveOptions, Archiver, ArchiveStats
from events.db.engine import make_engine
from events.keys import Keys


def main(argv: list[str]) -> int:
    redis_url, prefix, db_url = argv
    client = redis.Redis.from_url(redis_url)
    engine = make_engine(db_url)
    # Tiny transactions and batches: many places for a kill to land in.
    small = ArchiveOptions(
        running_interval_s=0.0, group_executions=3, tx_bytes=2048, page_events=8, batch_events=5
    )
    archiver = Archiver(client, Keys(prefix), engine, small)
    total = ArchiveStats()
    while True:
        stats = archiver.run_once()
        total.add(stats)
        if stats.errors:
            print(json.dumps({"error": dataclasses.asdict(stats)}), flush=True)
            return 1
        if not stats.due:
            break
    print(json.dumps(dataclasses.asdict(total)), flush=True)
    engine.dispose()
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
