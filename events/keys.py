"""Every Redis key and channel name of the project, in one place.

All share the configurable prefix. Per-execution keys carry the execution id in a hash tag
(`{...}`) so that one execution's keys live in one Redis Cluster slot and the publish script
may touch them together.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "cloudops"

    # -- per execution; each expires `history_ttl_s` after the execution's last event, renewed
    # by every publish, so a finished execution's history stays replayable for that long.
    def seq(self, execution_id: str) -> str:
        """INCR counter: the last sequence id handed out for this execution."""
        return f"{self.prefix}:ex:{{{execution_id}}}:seq"

    def history(self, execution_id: str) -> str:
        """Stream of envelopes; entry id `<seq>-0`, field `e` holds the envelope JSON."""
        return f"{self.prefix}:ex:{{{execution_id}}}:events"

    def record(self, execution_id: str) -> str:
        """Hash: the execution's record (status, timestamps, exit code, worker, spec)."""
        return f"{self.prefix}:ex:{{{execution_id}}}:record"

    def lease(self, execution_id: str) -> str:
        """String with a short TTL (`lease_ttl_s`) renewed by the running worker's heartbeat;
        when it expires while the record says running, the worker is declared lost."""
        return f"{self.prefix}:ex:{{{execution_id}}}:lease"

    # -- global
    def index(self) -> str:
        """Sorted set of execution ids scored by queued time (ms); trimmed to the history TTL."""
        return f"{self.prefix}:executions"

    def running(self) -> str:
        """Set of execution ids a worker has claimed and not finished; scanned by the reaper."""
        return f"{self.prefix}:running"

    def ticket(self, ticket: str) -> str:
        """Short-lived stream ticket for browsers' EventSource; expires `stream_ticket_ttl_s`."""
        return f"{self.prefix}:ticket:{ticket}"

    def slots(self, name: str) -> str:
        """Sorted set of execution ids holding one of a playbook's `max_concurrent` slots,
        scored by when they took it (ms). No expiry: every ending frees its slot (the step that
        ends the run, the reaper, the cancel of a waiting run), and a holder whose run ended
        without freeing it is dropped when the next run of that playbook has to wait."""
        return f"{self.prefix}:slots:{name}"

    def waiting(self, name: str) -> str:
        """List (FIFO) of queued execution ids of a playbook waiting for a `max_concurrent`
        slot. No expiry: a freed slot pops the head, and a cancelled run is removed when it is
        cancelled (or skipped when popped), so the list drains with the runs it holds."""
        return f"{self.prefix}:waiting:{name}"

    def stat(self, name: str) -> str:
        """Counter for metrics (events published, clients dropped); no expiry."""
        return f"{self.prefix}:stat:{name}"

    # -- pub/sub channels (not keys: they hold nothing)
    def channel(self, execution_id: str) -> str:
        return f"{self.prefix}:events:{execution_id}"

    def channel_all(self) -> str:
        return f"{self.prefix}:events"
