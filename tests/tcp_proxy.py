"""A TCP proxy on a loopback port in front of a real service, to break the service for one
test without touching it (the machine's RabbitMQ is shared): `down()` closes every connection
and the port (connection refused, as a stopped server), `freeze()` keeps accepting but passes
nothing either way (a hung server: the kernel accepts, nobody answers), `up()` / `thaw()` undo
them. No pytest here, so a benchmark could use it too.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

from tests.helpers import free_port


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._flowing = threading.Event()  # cleared while frozen
        self._flowing.set()
        self._closed = False
        self.accepted = 0

    # -- control ------------------------------------------------------------------------------
    def up(self) -> TcpProxy:
        with self._lock:
            assert self._listener is None
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", self.port))
            s.listen(128)
            self._listener = s
        threading.Thread(target=self._accept, args=(s,), name="proxy-accept", daemon=True).start()
        return self

    def down(self) -> None:
        """Refuse: the listening port closed, every open connection reset."""
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for c in conns:
            _reset(c)

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed = True
        self.thaw()
        self.down()

    # -- forwarding ---------------------------------------------------------------------------
    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            self.accepted += 1
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                if self._listener is not listener:
                    _reset(client)
                    _reset(server)
                    return
                self._conns += [client, server]
            threading.Thread(
                target=self._pump, args=(client, server), name="proxy-pump", daemon=True
            ).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._closed:
                if not self._flowing.wait(0.05):
                    # Frozen: read nothing; what the peers send waits in the kernel, as it
                    # would for a stopped process.
                    continue
                readable, _, _ = select.select(list(peers), [], [], 0.05)
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    peers[s].sendall(data)
        except (OSError, ValueError):  # reset, or closed by down() (fd -1)
            return
        finally:
            _reset(a)
            _reset(b)


def _reset(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        s.close()
