"""Which queues an execution runs on, for tokens limited to queues (CONTRACT §9).

An execution is within a token's queues when every step runs on one of them: a command on the
default queue, a playbook step on its `queue` (or the default), a fan-out step on its
`targets.queue`. A fan-out step that names its hosts or labels runs on those hosts' own queues,
known only when it starts: such an execution is within no queue scope (None).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def queues_of(spec: Mapping[str, Any] | None, default_queue: str) -> frozenset[str] | None:
    """Every queue the execution of `spec` (the record's stored spec) runs on; None: hosts."""
    steps = (spec or {}).get("steps")
    if not steps:
        return frozenset({default_queue})  # a command
    out: set[str] = set()
    for step in steps:
        targets = step.get("targets")
        if targets:
            if "queue" not in targets:
                return None
            out.add(str(targets["queue"]))
        else:
            out.add(str(step.get("queue") or default_queue))
    return frozenset(out)


def outside(scope: frozenset[str] | None, queues: frozenset[str] | None) -> str | None:
    """What of `queues` a token limited to `scope` may not touch, named for a 403; None: all
    within (or the token has no queue scope)."""
    if scope is None:
        return None
    if queues is None:
        return "hosts named by list or labels (not a queue)"
    extra = sorted(queues - scope)
    return None if not extra else ", ".join(extra)
