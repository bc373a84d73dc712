"""How executions and playbook steps become tasks: Celery on a fleet, threads when embedded.

Everything that starts or stops work goes through a `TaskQueue`: the dispatcher (submit,
cancel), a step handing off to the next one, a finishing run starting the runs that waited for
its `max_concurrent` slot and queueing its webhook notifications, the reaper. The fleet's is
`CeleryQueue`; embedded mode's is `worker.embedded.ThreadQueue`, which runs the very same task
bodies in threads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from celery.utils.nodenames import worker_direct
from kombu.exceptions import OperationalError

from events.errors import BrokerUnavailableError
from worker.app import broker_name, is_redis_url, priorities

log = logging.getLogger(__name__)

# The exchange of Celery's worker-direct queues (`worker_direct`, worker.app).
WORKER_DIRECT_EXCHANGE = worker_direct("x").exchange.name

TASK_RUN_COMMAND = "cloudops.run_command"
TASK_RUN_STEP = "cloudops.run_playbook_step"
TASK_NOTIFY = "cloudops.notify"
TASK_RUN_HOST = "cloudops.run_host_step"

# A run that started goes before runs waiting to start: the first step of a run is sent with
# the broker's lowest priority and everything else with its highest (worker.app.priorities:
# kombu's Redis transport pops priority 0 first, RabbitMQ the highest number), so a finishing
# step's successor does not queue behind a whole batch of new runs, each started run ends
# promptly, and the rest stay `queued`.


@dataclass(frozen=True)
class Route:
    """Where a step's task goes: a queue (None: the default one), or one host's own queue
    (worker.playbook.targets.step_route decides)."""

    queue: str | None
    host: str | None = None


class TaskQueue(Protocol):
    def send_command(self, execution_id: str, queue: str | None) -> None:
        """Queue the task that runs command execution `execution_id` (task id: the same)."""
        ...

    def send_step(
        self, execution_id: str, index: int, route: Route, *, secrets: Secrets = None
    ) -> None:
        """Queue the task of step `index` (0-based) of a playbook run (see step_task_id) where
        `route` says: a queue, or a worker's own queue; `secrets` go in its arguments only."""
        ...

    def send_hosts(
        self, execution_id: str, index: int, hosts: Sequence[str], *, secrets: Secrets = None
    ) -> dict[str, str]:
        """Queue each host's run of fan-out step `index` on that very worker (`secrets` in its
        arguments only); the hosts whose run could not be queued, with why."""
        ...

    def send_notify(self, execution_id: str) -> None:
        """Queue the delivery of an ended execution's webhook notifications (worker.notify)."""
        ...

    def revoke(self, task_id: str, *, terminate: bool) -> None:
        """Discard a queued task; with `terminate`, also stop it where it runs (the task then
        kills its command's tree and reports)."""
        ...


# A playbook run's secret params' values (worker.playbook.secrets), or None.
Secrets = Mapping[str, str] | None


def secret_kwargs(secrets: Secrets) -> dict[str, Any]:
    """A task's `secrets` argument, and how Celery shows it: its logs and monitoring events
    (Flower) print `kwargsrepr` instead of the arguments (Celery's documented way to keep
    sensitive arguments out of them)."""
    if not secrets:
        return {}
    return {
        "kwargs": {"secrets": dict(secrets)},
        "kwargsrepr": repr({"secrets": {name: "***" for name in secrets}}),
    }


def step_task_id(execution_id: str, index: int) -> str:
    """Readable in Flower and unique per step: `<execution id>.s<step number>`."""
    return f"{execution_id}.s{index + 1}"


def direct(host: str) -> dict[str, str]:
    """Send options for worker `host`'s own queue (Celery's worker_direct, worker.app): only
    that worker consumes it. Sent to its exchange by routing key, without declaring the queue
    here: the worker declares it with the broker's arguments."""
    return {"exchange": WORKER_DIRECT_EXCHANGE, "routing_key": host}


def host_task_id(execution_id: str, index: int, host: str) -> str:
    """`<execution id>.s<step number>@<host>`: one host's run of a fan-out step."""
    return f"{step_task_id(execution_id, index)}@{host}"


class CeleryQueue:
    """Tasks through a Celery app (a worker's own, or a submitting process's client app)."""

    def __init__(self, app: Any, default_queue: str) -> None:
        self.app = app
        self.default_queue = default_queue
        self.go_on_priority, self.first_step_priority = priorities(app.conf.broker_url)
        self._amqp = not is_redis_url(app.conf.broker_url)

    def send_command(self, execution_id: str, queue: str | None) -> None:
        self._send(
            TASK_RUN_COMMAND,
            args=[execution_id],
            task_id=execution_id,
            queue=queue or self.default_queue,
            priority=self.go_on_priority,
        )

    def send_step(
        self, execution_id: str, index: int, route: Route, *, secrets: Secrets = None
    ) -> None:
        where = direct(route.host) if route.host else {"queue": route.queue or self.default_queue}
        self._send(
            TASK_RUN_STEP,
            args=[execution_id, index],
            task_id=step_task_id(execution_id, index),
            priority=self.first_step_priority if index == 0 else self.go_on_priority,
            **where,
            **secret_kwargs(secrets),
        )

    def send_hosts(
        self, execution_id: str, index: int, hosts: Sequence[str], *, secrets: Secrets = None
    ) -> dict[str, str]:
        # One producer, and so one broker connection and channel, for all of them: twenty
        # sends each acquiring its own doubled the time to start a step's last host.
        failed: dict[str, str] = {}
        try:
            with self.app.producer_or_acquire() as producer:
                for host in hosts:
                    try:
                        self._send(
                            TASK_RUN_HOST,
                            args=[execution_id, index, host],
                            task_id=host_task_id(execution_id, index, host),
                            priority=self.go_on_priority,
                            producer=producer,
                            **direct(host),
                            **secret_kwargs(secrets),
                        )
                    except BrokerUnavailableError as e:
                        failed[host] = str(e)
        except (OperationalError, OSError) as e:  # no producer to be had: none was sent
            why = str(BrokerUnavailableError(broker_name(self.app.conf.broker_url), str(e)))
            return {h: failed.get(h, why) for h in hosts}
        return failed

    def send_notify(self, execution_id: str) -> None:
        # The highest priority, as work that goes on: a delivery is short (its POST is bounded)
        # and must not wait behind a batch of new runs.
        self._send(
            TASK_NOTIFY,
            args=[execution_id],
            task_id=f"{execution_id}.notify",
            queue=self.default_queue,
            priority=self.go_on_priority,
        )

    def _send(self, name: str, **options: Any) -> None:
        # Bounded by the app's connect timeout and publish retry policy (worker.app), and on
        # RabbitMQ by the wait for the broker's confirm.
        if self._amqp:
            options["confirm_timeout"] = self.app.conf.broker_connection_timeout
        try:
            self.app.send_task(name, **options)
        except (OperationalError, OSError) as e:
            raise BrokerUnavailableError(broker_name(self.app.conf.broker_url), str(e)) from e

    @property
    def name(self) -> str:
        """How errors and /healthz name the broker (api.dispatch.HealthCheck)."""
        return f"broker ({broker_name(self.app.conf.broker_url)})"

    def check(self) -> None:
        """Connect to the broker on a connection of its own (the AMQP handshake, or a channel
        of kombu's Redis transport, which PINGs), bounded by the connect timeout; raise if it
        does not answer."""
        with self.app.connection_for_write() as conn:
            conn.connect()
            conn.default_channel  # noqa: B018 - opening it is the check

    def revoke(self, task_id: str, *, terminate: bool) -> None:
        # terminate: SIGTERM to the pool process running it, which our task traps to kill its
        # command's session (worker.runner.sigterm_stops). The revoke is a broadcast that a
        # restarting worker misses: the cancel mark in the record covers that, and so it does
        # when the broker is down (the cancel still happens, within the watchdog's poll).
        # A connection of its own, without publisher confirms (kombu's pidbox waits for one
        # forever), so that a hung broker costs at most the connect timeout.
        kwargs: dict[str, Any] = {"terminate": True, "signal": "SIGTERM"} if terminate else {}
        try:
            with self.app.connection_for_write(
                transport_options={"confirm_publish": False}
            ) as conn:
                self.app.control.revoke(task_id, connection=conn, **kwargs)
        except (OperationalError, OSError) as e:
            log.warning("revoke of %s not broadcast (the cancel mark stands): %s", task_id, e)
