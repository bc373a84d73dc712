"""`/metrics` in the Prometheus text format (0.0.4), written by hand: a dozen lines."""

from __future__ import annotations

from api.relay import DROPPED_STAT, Relay
from events.models import Status

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> str:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    lines += [f"{name}{labels} {value:g}" for labels, value in samples]
    return "\n".join(lines)


async def render(relay: Relay) -> str:
    store = relay.store
    recent = relay.options.metrics_recent_executions
    counts = await store.status_counts(recent)
    families = [
        _family(
            "cloudops_executions",
            "gauge",
            f"Executions by status, among the {recent} most recent.",
            [(f'{{status="{s.value}"}}', counts.get(s.value, 0)) for s in Status],
        ),
        _family(
            "cloudops_running_executions",
            "gauge",
            "Executions a worker has claimed and not finished.",
            [("", await store.running_count())],
        ),
        _family(
            "cloudops_events_published_total",
            "counter",
            "Events published by every worker.",
            [("", await store.stat("events"))],
        ),
        _family(
            "cloudops_connected_clients",
            "gauge",
            "Stream clients connected to this relay.",
            [(f'{{kind="{k}"}}', v) for k, v in sorted(relay.clients.items())],
        ),
        _family(
            "cloudops_clients_dropped_total",
            "counter",
            "Stream clients closed for being too slow, by every relay.",
            [("", await store.stat(DROPPED_STAT))],
        ),
        _family(
            "cloudops_relay_pubsub_reconnects_total",
            "counter",
            "Times this relay's pub/sub connection was re-established.",
            [("", relay.hub.reconnects)],
        ),
        _family(
            "cloudops_relay_pubsub_lost_total",
            "counter",
            "Times an execution's channel was found behind its counter (a lost message).",
            [("", relay.hub.lost_messages)],
        ),
        _family(
            "cloudops_relay_pubsub_channels",
            "gauge",
            "Channels this relay's pub/sub connection is subscribed to.",
            [("", relay.hub.channels())],
        ),
    ]
    return "\n".join(families) + "\n"
