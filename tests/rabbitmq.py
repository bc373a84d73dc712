"""The machine's RabbitMQ for tests: a virtual host of a test module's own, made and deleted
with `rabbitmqctl` (the management plugin is not assumed), so that queues, exchanges and
messages of one module never meet another's. No pytest here, so a benchmark can use it.

`CLOUDOPS_TEST_AMQP_URL` names another broker (default amqp://guest:guest@127.0.0.1:5672);
`.ci/setup` installs and starts rabbitmq-server when nothing answers on 5672.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

AMQP_URL = os.environ.get("CLOUDOPS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672")


def _ctl(*args: str) -> None:
    ctl = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    try:
        subprocess.run(
            [ctl, "-q", *args],
            check=True,
            capture_output=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", b"") or b""
        raise RuntimeError(
            f"rabbitmqctl {' '.join(args)} failed ({e}): {detail.decode(errors='replace')[:300]}"
            " (bash .ci/setup installs and starts RabbitMQ)"
        ) from e


def _answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def private_vhost(name: str | None = None) -> Iterator[str]:
    """A fresh virtual host, the URL's user given every permission on it; deleted after."""
    if not _answers(AMQP_URL):
        raise RuntimeError(f"no RabbitMQ answers at {AMQP_URL} (bash .ci/setup starts one)")
    vhost = name or f"cloudops-test-{uuid.uuid4().hex[:10]}"
    user = urlsplit(AMQP_URL).username or "guest"
    _ctl("add_vhost", vhost)
    try:
        _ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
        yield f"{AMQP_URL.rstrip('/')}/{quote(vhost, safe='')}"
    finally:
        _ctl("delete_vhost", vhost)
