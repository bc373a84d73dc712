"""Which hosts a fan-out step's `targets` name (CONTRACT §7), from the host registry, and
where a step's task goes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from events.hosts import HostRegistry
from worker.runtime import Runtime
from worker.taskqueue import Route


def online_hosts(rt: Runtime) -> list[dict[str, Any]]:
    """The registry's listing as of now (events.hosts.HostRegistry.read)."""
    return HostRegistry(rt.keys).read(rt.redis, datetime.now(UTC))


def match_targets(
    hosts: list[dict[str, Any]], targets: Mapping[str, Any]
) -> tuple[list[str], list[str]]:
    """(online hosts to run on, named hosts that are offline or unknown) for `targets`, from
    the registry's listing (events.hosts.HostRegistry.read)."""
    online = [h for h in hosts if h["online"]]
    if "hosts" in targets:
        up = {h["hostname"] for h in online}
        named = list(dict.fromkeys(targets["hosts"]))
        return [h for h in named if h in up], [h for h in named if h not in up]
    if "queue" in targets:
        return [h["hostname"] for h in online if targets["queue"] in h["queues"]], []
    wanted = dict(targets["labels"]).items()
    return [h["hostname"] for h in online if wanted <= dict(h["labels"]).items()], []


def step_route(rt: Runtime, step: Mapping[str, Any]) -> Route:
    """A step (its RenderedStep.to_dict form) goes to its `queue`, else a fan-out step's
    target queue (a worker there resolves the hosts), else, for `hosts` or `labels`, to a
    matching online host (or any online host: the step then fails there, saying why), else
    to the default queue."""
    targets = step.get("targets") or {}
    queue = step.get("queue") or targets.get("queue")
    if queue or not targets:
        return Route(queue)
    listing = online_hosts(rt)
    up, _ = match_targets(listing, targets)
    if not up:
        up = [h["hostname"] for h in listing if h["online"]]
    return Route(None, up[0] if up else None)
