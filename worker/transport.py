"""kombu's Redis transport (and its Sentinel flavour), made to survive a queue item that is
not a message.

kombu pops an item off a queue's Redis list and decodes it inside the worker's consumer loop;
an item that is not JSON, or JSON that is not a kombu message, raises there, and Celery calls
that an "Unrecoverable error" and shuts the worker down (measured by the fault suite). Anyone
who can write to the broker's Redis could stop every worker with one LPUSH. Here such an item,
already popped, is logged and dropped, and the worker goes on; real messages are untouched.

kombu has no public hook before that decode (kombu #2421 reports the same crash for SQS, open:
https://github.com/celery/kombu/issues/2421; celery #4308 for undecodable bodies:
https://github.com/celery/celery/issues/4308), so this module overrides two of its private
methods, `Channel._brpop_read` and `Transport._deliver`: the only place in the code base that
does so, with kombu pinned to the minor version it was read against (pyproject.toml). The
fault suite's garbage test fails with the stock transport.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Empty

log = logging.getLogger(__name__)


def _is_message(item: Any) -> bool:
    """What kombu's virtual transport needs of a decoded queue item to make a Message."""
    return (
        isinstance(item, dict)
        and isinstance(item.get("properties"), dict)
        and isinstance(item.get("headers", {}), dict)
    )


class _DropsGarbage:
    """The override of a Channel: mixed in before kombu's own channel class."""

    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)  # type: ignore[misc]
        # Only the decode of the popped item: any other error (delivering a real message)
        # still surfaces.
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            log.error("dropped an item of a broker queue that is not JSON: %s", e)
            raise Empty() from e


class _DeliversMessages:
    """The override of a Transport: mixed in before kombu's own transport class."""

    def _deliver(self, message: Any, queue: str | None) -> None:
        if not _is_message(message):
            log.error("dropped an item of broker queue %s that is not a message", queue)
            return
        super()._deliver(message, queue)  # type: ignore[misc]


class Channel(_DropsGarbage, kombu_redis.Channel):
    pass


class Transport(_DeliversMessages, kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(_DropsGarbage, kombu_redis.SentinelChannel):
    pass


class SentinelTransport(_DeliversMessages, kombu_redis.SentinelTransport):
    """For a Redis broker through Sentinel (`sentinel://` URLs, transport option
    `master_name`)."""

    Channel = SentinelChannel
