"""Rows reserved for parts of the system that other work provides (issue 8's full table).

Each is a `slot`: it shows as pending in the table until the module it needs exists and a row
function replaces the slot (register it with `@row` under the same name, here).

- batch (issue 4): drain N queued playbooks (worker/playbook.py) vs the raw Celery no-op
  throughput of `noop_app` on the same broker, executions/s.
"""

from __future__ import annotations

from tests.benchmarks.core import slot

slot(
    "batch",
    issue=4,
    title="batch drain of playbooks vs raw Celery no-op throughput",
    needs=("worker.playbook",),
)
