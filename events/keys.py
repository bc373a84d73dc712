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

    def notifications(self, execution_id: str) -> str:
        """List of the execution's webhook delivery attempts (JSON each, oldest first;
        events.notifications). Set to expire `history_ttl_s` after each attempt: the execution
        has ended, so that is about when its history expires too."""
        return f"{self.prefix}:ex:{{{execution_id}}}:notifications"

    def notify_claim(self, execution_id: str) -> str:
        """String set NX by the first notification task of an execution: however often its end
        is finished (a reaper racing the worker), its webhooks are notified once. Expires with
        the attempts."""
        return f"{self.prefix}:ex:{{{execution_id}}}:notify"

    def fan_out(self, execution_id: str, step_number: int) -> str:
        """Hash: a fan-out step's hosts, which started, how each ended (events/lua/fan_out.lua).
        Expires with the history (`history_ttl_s`): nothing reads it once the step is over,
        but the record's step entry."""
        return f"{self.prefix}:ex:{{{execution_id}}}:fan:{step_number}"

    def fan_out_go(self, execution_id: str, step_number: int) -> tuple[str, str]:
        """A fan-out step's start barrier (FanOutStore.gather): the counter of its first hosts
        ready to start, and the list the last of them fills with one token per waiter."""
        base = f"{self.prefix}:ex:{{{execution_id}}}:fan:{step_number}"
        return f"{base}:ready", f"{base}:go"

    def host_lease(self, execution_id: str, step_number: int, host: str) -> str:
        """String with a short TTL (`lease_ttl_s`) renewed while `host` runs its share of a
        fan-out step; when it expires before the host ended, the host is `lost`."""
        return f"{self.prefix}:ex:{{{execution_id}}}:fan:{step_number}:lease:{host}"

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

    def prune_turn(self, day: str) -> str:
        """String set NX by the relay that prunes the history database on `day` (YYYY-MM-DD,
        UTC): one relay a day, whatever their number. Expires after two days, when no relay
        can still be asking for that day."""
        return f"{self.prefix}:prune:{day}"

    def schedule_tick(self, schedule_id: str, tick: str) -> str:
        """String set once (SET NX, expiring) by whichever scheduler starts schedule
        `schedule_id`'s run of `tick`: one run per tick fleet-wide (events.schedules)."""
        return f"{self.prefix}:schedule:{schedule_id}:tick:{tick}"

    def beat_prefix(self) -> str:
        """celery-redbeat's keys (its entries, schedule set and lock) start with this."""
        return f"{self.prefix}:beat"

    def host(self, hostname: str) -> str:
        """String: a worker's registry entry as JSON (events/hosts.py), rewritten by its main
        process every `host_refresh_interval_s`. Expires a day after the last write: an offline
        host stays listed that long (CONTRACT §7), then goes by itself."""
        return f"{self.prefix}:host:{hostname}"

    def hosts(self) -> str:
        """Sorted set of worker hostnames scored by when each was last seen (ms): what readers
        list. Each write drops the hostnames not seen for a day, and the set expires a day
        after the last write of any worker."""
        return f"{self.prefix}:hosts"

    def stat(self, name: str) -> str:
        """Counter for metrics (events published, clients dropped); no expiry."""
        return f"{self.prefix}:stat:{name}"

    # -- pub/sub channels (not keys: they hold nothing)
    def channel(self, execution_id: str) -> str:
        return f"{self.prefix}:events:{execution_id}"

    def channel_all(self) -> str:
        return f"{self.prefix}:events"
