"""An HTTP proxy on a loopback port in front of the S3 server that injects the faults object storage
shows in production, by a fixed schedule over the requests it receives:

- `503 SlowDown` (throttling) and `500 InternalError` answered without forwarding,
- slow answers (held for `delay` seconds before forwarding),
- connections cut before forwarding (the request never arrives), and cut after forwarding (the
  operation happened, its answer is lost: the client retries something that already took effect).

`outage()` makes every request fail until `restore()`; `refuse` cuts the requests it matches (by
method and path). Requests and faults are counted.
"""

from __future__ import annotations

import http.client
import itertools
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_S3_ERROR = (
    "<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{code}</Message></Error>"
)
SCHEDULE = ("pass", "slowdown", "pass", "cut-before", "slow", "pass", "error", "cut-after", "pass")
"""The fault of request n is SCHEDULE[n % len(SCHEDULE)]."""
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class FaultyS3Proxy:
    def __init__(self, target_port: int, schedule: tuple[str, ...] = SCHEDULE, delay: float = 1.0) -> None:
        self.target_port = target_port
        self.schedule = schedule
        self.delay = delay
        self.faults: Counter[str] = Counter()
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self._outage = False
        self.refuse: Callable[[str, str], bool] = lambda method, path: False
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return None

            def _any(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def outage(self) -> None:
        self._outage = True

    def restore(self) -> None:
        self._outage = False

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _fault(self, method: str, path: str) -> str:
        with self._lock:
            if self._outage or self.refuse(method, path):
                fault = "outage"
            else:
                fault = self.schedule[next(self._numbers) % len(self.schedule)]
            self.faults[fault] += 1
            return fault

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        fault = self._fault(handler.command, handler.path)
        if fault in {"cut-before", "outage"}:
            handler.rfile.read(length // 2)
            _cut(handler)
            return
        body = handler.rfile.read(length)
        if fault in {"slowdown", "error"}:
            code, status = ("SlowDown", 503) if fault == "slowdown" else ("InternalError", 500)
            _answer(
                handler, status, {"Content-Type": "application/xml"}, _S3_ERROR.format(code=code).encode()
            )
            return
        if fault == "slow":
            time.sleep(self.delay)
        status, headers, answer = self._forward(handler, body)
        if fault == "cut-after":
            _cut(handler)
            return
        _answer(handler, status, headers, answer)

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.target_port, timeout=60)
        try:
            headers = {
                name: value for name, value in handler.headers.items() if name.lower() not in _HOP_BY_HOP
            }
            headers["Content-Length"] = str(len(body))
            connection.request(handler.command, handler.path, body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            kept = {name: value for name, value in response.getheaders() if name.lower() not in _HOP_BY_HOP}
            return response.status, kept, answer
        finally:
            connection.close()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        return None  # a connection this proxy cut on purpose


def _answer(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes) -> None:
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


def _cut(handler: BaseHTTPRequestHandler) -> None:
    """Reset the client's connection (RST, as a dying network or load balancer does)."""
    handler.close_connection = True
    sock = handler.connection
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
