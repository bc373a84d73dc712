"""Redis behind Sentinel on loopback ports, for tests and benchmarks: a master, its replicas and
three sentinels (Redis' own `redis-server CONF --sentinel`), each a real process with its own
port and folder. `kill_master()` SIGKILLs the current master, `wait_failover()` waits until the
sentinels promoted a replica, `restart()` starts a killed server again (the sentinels turn it
into a replica of the new master). No pytest here, so a benchmark can use it.

Replication is Redis' own (asynchronous); nothing is persisted to disk, so a replica is the
only copy: exactly the setting CLOUDOPS_REDIS_MIN_REPLICAS is about. With `cuttable` the
replicas reach the master through a TCP proxy (tests/tcp_proxy.py), so that `partition()` can
cut the link between them as a network would: what the master acknowledges from then on is on
no replica. (On loopback a stopped replica loses nothing: the stream waits in the kernel's
buffers.) Benchmarks leave it out: the proxy's Python threads would be in every WAIT.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import redis

from tests.helpers import ManagedProcess, free_port, start_process, wait_until
from tests.tcp_proxy import TcpProxy

MASTER_NAME = "cloudops-ha"
# How long a master must not answer before a sentinel thinks it down (production: 5-30 s).
DOWN_AFTER_MS = 1000


class Node:
    """One redis-server (data) on its own port and folder; restartable on the same port."""

    def __init__(self, tmp: Path, role: str) -> None:
        self.port = free_port()
        self.role = role
        self.dir = tmp / f"{role}-{self.port}"
        self.dir.mkdir(parents=True)
        self.proc: ManagedProcess | None = None
        self.starts = 0
        self.replica_of: int | None = None

    def argv(self) -> list[str]:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        argv += ["--save", "", "--appendonly", "no", "--maxclients", "2000"]
        # A replica (re)joining gets its full copy at once, not after the default 5 s wait.
        argv += ["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        if self.replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        return argv

    def start(self) -> None:
        assert self.proc is None
        self.starts += 1
        log = self.dir / f"server-{self.starts}.log"
        self.proc = start_process(self.argv(), dict(os.environ), log, f"redis-{self.role}")
        probe = self.client(socket_connect_timeout=0.5, socket_timeout=2)
        try:
            wait_until(lambda: self._answers(probe), 20, 0.02, f"redis {self.role} to answer")
        finally:
            probe.close()

    def _answers(self, probe: redis.Redis) -> bool:
        assert self.proc is not None, "not started"
        assert self.proc.proc.poll() is None, self.proc.log()
        try:
            return bool(probe.ping())
        except (redis.ConnectionError, redis.BusyLoadingError):
            return False

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill_tree()
            self.proc = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.proc.poll() is None


class SentinelNode:
    def __init__(self, tmp: Path, n: int, master_port: int, quorum: int) -> None:
        self.port = free_port()
        self.dir = tmp / f"sentinel{n}-{self.port}"
        self.dir.mkdir(parents=True)
        self.conf = self.dir / "sentinel.conf"
        # Sentinel rewrites its own config file (it must be writable): what it learnt survives.
        self.conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            # Redis' default (3 min): a replica reaching the master through the proxy is not
            # "fixed" to the master's own port for that long.
            f"sentinel failover-timeout {MASTER_NAME} 180000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        self.proc: ManagedProcess | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        self.proc = start_process(
            [binary, str(self.conf), "--sentinel"], dict(os.environ), self.dir / "log", "sentinel"
        )

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=1, decode_responses=True
        )

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill_tree()
            self.proc = None


class SentinelSet:
    """A master, `replicas` replicas, three sentinels (quorum 2); all stopped by `close()`."""

    def __init__(
        self, tmp: Path, *, replicas: int = 1, sentinels: int = 3, cuttable: bool = True
    ) -> None:
        self.tmp = tmp
        self.master = Node(tmp, "master")
        self.replicas = [Node(tmp, f"replica{n}") for n in range(1, replicas + 1)]
        self.link = TcpProxy(self.master.port) if cuttable else None
        for r in self.replicas:
            r.replica_of = self.link.port if self.link else self.master.port
        quorum = sentinels // 2 + 1
        self.sentinels = [
            SentinelNode(tmp, n, self.master.port, quorum) for n in range(1, sentinels + 1)
        ]
        self.killed: list[Node] = []

    @property
    def nodes(self) -> list[Node]:
        return [self.master, *self.replicas]

    @property
    def addresses(self) -> tuple[str, ...]:
        """CLOUDOPS_REDIS_SENTINELS."""
        return tuple(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def start(self) -> SentinelSet:
        try:
            if self.link is not None:
                self.link.up()
            for node in self.nodes:
                node.start()
            wait_until(self._replicated, 20, 0.05, "the replicas to sync with the master")
            for s in self.sentinels:
                s.start()
            wait_until(self._watched, 30, 0.1, "every sentinel to see the replicas and peers")
        except BaseException:
            self.close()
            raise
        return self

    def _replicated(self) -> bool:
        with contextlib.closing(self.master.client()) as c:
            info: dict[str, Any] = c.info("replication")
        return int(info.get("connected_slaves", 0)) == len(self.replicas) and all(
            info.get(f"slave{i}", {}).get("state") == "online" for i in range(len(self.replicas))
        )

    def _watched(self) -> bool:
        for s in self.sentinels:
            with contextlib.closing(s.client()) as c:
                try:
                    state: Any = c.sentinel_master(MASTER_NAME)
                except redis.RedisError:
                    return False
            if int(state.get("num-slaves", 0)) < len(self.replicas):
                return False
            if int(state.get("num-other-sentinels", 0)) < len(self.sentinels) - 1:
                return False
        return True

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers says."""
        for s in self.sentinels:
            port = _master_port_of(s)
            if port is not None:
                return port
        return None

    def node_on(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def kill_master(self) -> Node:
        """SIGKILL the current master: a crash, whatever it had not sent to a replica is lost."""
        port = self.master_port()
        assert port is not None, "no sentinel knows the master"
        node = self.node_on(port)
        node.kill()
        self.killed.append(node)
        return node

    def wait_failover(self, old_port: int, timeout_s: float = 30.0) -> Node:
        """Until every sentinel names a new master that says it is one; that node."""

        def promoted() -> int:
            """The new master's port; 0 while there is none."""
            ports = {_master_port_of(s) for s in self.sentinels}
            port = ports.pop() if len(ports) == 1 else None
            if port is None or port == old_port:
                return 0
            with contextlib.closing(self.node_on(port).client(socket_timeout=1)) as c:
                role = c.info("replication").get("role")
            return port if role == "master" else 0

        new = wait_until(promoted, timeout_s, 0.05, "the sentinels to promote a replica")
        return self.node_on(new)

    def restart(self, node: Node) -> None:
        """Start a killed server again, empty, as a replica of the current master (what its
        config says once Sentinel rewrote it; left to itself, a sentinel notices a returning
        old master only at its next 10 s INFO round). Returns once it holds a full copy."""
        port = self.master_port()
        assert port is not None, "no sentinel knows the master"
        node.replica_of = port
        node.start()

        def synced() -> bool:
            with contextlib.closing(node.client(socket_timeout=1)) as c:
                info: dict[str, Any] = c.info("replication")
            return info.get("role") == "slave" and info.get("master_link_status") == "up"

        wait_until(synced, 30, 0.1, "the old master to rejoin as a replica")

    def partition(self) -> None:
        """Cut the replication link: the master goes on, its replicas get nothing more."""
        assert self.link is not None, "a SentinelSet(cuttable=True) only"
        self.link.down()

    def heal(self) -> None:
        assert self.link is not None, "a SentinelSet(cuttable=True) only"
        self.link.up()

    def close(self) -> None:
        for s in self.sentinels:
            s.kill()
        for node in self.nodes:
            node.kill()
        if self.link is not None:
            self.link.close()


def _master_port_of(sentinel: SentinelNode) -> int | None:
    """The master's port as this sentinel says; None if it does not answer or know one."""
    with contextlib.closing(sentinel.client()) as c:
        try:
            addr: Any = c.sentinel_get_master_addr_by_name(MASTER_NAME)
        except redis.RedisError:
            return None
    return int(addr[1]) if addr else None
