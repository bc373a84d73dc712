"""`/metrics` in the Prometheus text format, through prometheus-client.

Two kinds of series. The fleet's, read from Redis at each scrape (every relay serves the same):
executions by status, running executions, events published, clients dropped, and the
histograms of execution duration and queue wait (events/stats.py). This relay's own, observed
as they happen: connected clients, its pub/sub connection, and the delivery latency of events
from the moment its pub/sub connection received them to their write to a client's socket.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from api.limits import DROP_REASONS, REFUSAL_REASONS, REFUSALS
from events.records import decode_hash
from events.stats import FLEET_HISTOGRAMS, histogram_keys
from events.vocabulary import Status

if TYPE_CHECKING:
    from api.relay import Relay

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DROPPED_STAT = "clients_dropped"

# Event delivery at the relay, in seconds: a hop of microseconds when all is well, up to the
# stall limit for a client that reads nothing.
DELIVERY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30)


class _Snapshot(Collector):
    """The values of one scrape, fetched from Redis (asynchronously) before it is rendered."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterator[Metric]:
        yield from self.families


class RelayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.delivery = Histogram(
            "cloudops_relay_delivery_seconds",
            "Events from this relay's pub/sub connection to a client's socket (per write).",
            buckets=DELIVERY_BUCKETS_S,
            registry=self.registry,
        )
        self._snapshot = _Snapshot()
        self.registry.register(self._snapshot)

    async def render(self, relay: Relay) -> bytes:
        self._snapshot.families = await _families(relay)
        return generate_latest(self.registry)


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _by_reason(name: str, help_text: str, reasons: tuple[str, ...], counts: Counter[str]) -> Metric:
    family = CounterMetricFamily(name, help_text, labels=["reason"])
    for reason in reasons:
        family.add_metric([reason], counts[reason])
    return family


def _limit_families() -> list[Metric]:
    """This process's refusals and drops by reason (api/limits.py, api/server.py)."""
    return [
        _by_reason(
            "cloudops_relay_refused",
            "Requests and connections this relay refused for passing a limit, by reason.",
            REFUSAL_REASONS,
            REFUSALS.refused,
        ),
        _by_reason(
            "cloudops_relay_clients_dropped",
            "Stream clients this relay closed: stalled, buffer (too many bytes waiting), revoked.",
            DROP_REASONS,
            REFUSALS.dropped,
        ),
    ]


async def _families(relay: Relay) -> list[Metric]:
    store = relay.store
    recent = relay.options.metrics_recent_executions
    counts = await store.status_counts(recent)
    by_status = GaugeMetricFamily(
        "cloudops_executions",
        f"Executions by status, among the {recent} most recent.",
        labels=["status"],
    )
    for s in Status:
        by_status.add_metric([s.value], counts.get(s.value, 0))
    clients = GaugeMetricFamily(
        "cloudops_connected_clients", "Stream clients connected to this relay.", labels=["kind"]
    )
    for kind, n in sorted(relay.clients.items()):
        clients.add_metric([kind], n)
    hub = relay.hub
    families: list[Metric] = [
        by_status,
        _gauge(
            "cloudops_running_executions",
            "Executions a worker has claimed and not finished.",
            await store.running_count(),
        ),
        CounterMetricFamily(
            "cloudops_events_published",
            "Events published by every worker.",
            value=await store.stat("events"),
        ),
        clients,
        CounterMetricFamily(
            "cloudops_clients_dropped",
            "Stream clients closed for being too slow, by every relay.",
            # This relay's closes not yet added to the Redis counter count already.
            value=await store.stat(DROPPED_STAT) + relay.drops.pending,
        ),
        CounterMetricFamily(
            "cloudops_relay_pubsub_reconnects",
            "Times this relay's pub/sub connection was re-established.",
            value=hub.reconnects,
        ),
        CounterMetricFamily(
            "cloudops_relay_pubsub_lost",
            "Times an execution's channel was found behind its counter (a lost message).",
            value=hub.lost_messages,
        ),
        _gauge(
            "cloudops_relay_pubsub_channels",
            "Channels this relay's pub/sub connection is subscribed to.",
            hub.channels(),
        ),
    ]
    families += _limit_families()
    raws = await store.hashes(histogram_keys(store.keys))
    for spec, raw in zip(FLEET_HISTOGRAMS, raws, strict=True):
        text = decode_hash(raw)
        buckets, total = spec.cumulative(text)
        families.append(
            HistogramMetricFamily(spec.name, spec.help, buckets=buckets, sum_value=total)
        )
    return families
