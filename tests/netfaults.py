"""A TCP proxy on a loopback port that cuts the connection after a given number of bytes.

It stands between a real client and a real server to make a network failure happen mid-request:
once `cut_after` bytes have gone from clients to the server, both sides of that connection are
reset. Later connections pass through untouched.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class CuttingProxy:
    def __init__(self, target_port: int, cut_after: int) -> None:
        self.target_port = target_port
        self.cut_after = cut_after
        self.forwarded = 0
        self.cut = threading.Event()
        self._lock = threading.Lock()
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
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
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
