"""TCP proxies on loopback ports that make a network fail between a real client and a real server.

- `CuttingProxy` cuts a connection mid-request: once `cut_after` bytes have gone from clients to the
  server, both sides of that connection are reset. Later connections pass through untouched.
- `BlackholeProxy` stops forwarding on `blackhole()`, as a network that drops packets does: nothing
  is refused or reset, bytes simply stop arriving (they wait in the proxy, as in TCP retransmission
  queues) and new connections get no answer; `restore()` lets everything flow again.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class _Proxy:
    """Accepts on a loopback port and hands each client to `_serve` (in the accepting thread)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._closing = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/files/"

    def close(self) -> None:
        """Stop accepting. Closing alone would not wake the thread blocked in accept(), which would
        then accept on whatever socket reuses the descriptor later; shutdown wakes it."""
        self._closing = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._acceptor.join(timeout=5)

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._closing:
                client.close()
                return
            self._serve(client)

    def _serve(self, client: socket.socket) -> None:
        raise NotImplementedError


class CuttingProxy(_Proxy):
    def __init__(self, target_port: int, cut_after: int) -> None:
        self.cut_after = cut_after
        self.forwarded = 0
        self.cut = threading.Event()
        self._lock = threading.Lock()
        super().__init__(target_port)

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while data := source.recv(65536):
                allowed = self._count(data, source, sink) if upstream and not self.cut.is_set() else data
                if allowed is None:
                    return
                sink.sendall(allowed)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            source.close()  # each pump closes the socket it reads; the other pump closes the other

    def _count(self, data: bytes, source: socket.socket, sink: socket.socket) -> bytes | None:
        with self._lock:
            room = self.cut_after - self.forwarded
            if len(data) < room:
                self.forwarded += len(data)
                return data
            self.forwarded += room
            self.cut.set()
        sink.sendall(data[:room])
        for sock in (source, sink):  # RST, as a dropped mobile connection looks to the server
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv on this socket
            sock.close()
        return None


class BlackholeProxy(_Proxy):
    def __init__(self, target_port: int) -> None:
        self._flowing = threading.Event()
        self._flowing.set()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        super().__init__(target_port)

    def blackhole(self) -> None:
        self._flowing.clear()

    def restore(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._flowing.set()
        super().close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _serve(self, client: socket.socket) -> None:
        threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self._flowing.wait()  # a blackholed network answers no handshake: the client waits
        if self._closing:
            client.close()
            return
        try:
            server = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets += [client, server]
        threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
        threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()  # held, not dropped: the connection recovers on restore
                if self._closing:
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
