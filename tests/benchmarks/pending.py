"""Rows reserved for work not measured yet (issue 8's full table).

Each is a `slot`: it shows in the table as pending, with what it waits for, until a row
function replaces it (register it with `@row` under the same name, in its own module, listed in
`runner.ROW_MODULES`).

- latency-100 (issue 8): write-to-client latency with 100 chatty executions at once. It needs
  a fleet with 100 free slots; one 2-core machine runs 20 (the `latency` row).
"""

from __future__ import annotations

from tests.benchmarks.core import slot

slot(
    "latency-100",
    issue=8,
    title="write-to-client latency, 100 chatty executions at once",
    needs=("tests.benchmarks.latency_fleet",),
)
