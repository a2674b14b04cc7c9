"""A hook receiver in the style of tusd's `examples/hooks/http/server.py`: a real HTTP server on a
loopback port that reads tusd v2 hook requests and answers with tusd's hook response JSON.

It records every request (its JSON body, headers and raw bytes) and decides its answer with `policy`,
which tests replace: a function from the hook request to (HTTP status, response object). `failing_until`
makes it answer 500 until a moment; `hold` makes it hang (a receiver that never answers)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Policy = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]


@dataclass(frozen=True)
class Received:
    body: dict[str, Any]
    headers: dict[str, str]
    raw: bytes

    @property
    def type(self) -> str:
        return str(self.body["Type"])

    @property
    def upload(self) -> dict[str, Any]:
        upload: dict[str, Any] = self.body["Event"]["Upload"]
        return upload


def accept_all(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return 200, {}


class HookReceiver:
    def __init__(self, policy: Policy = accept_all) -> None:
        self.policy = policy
        self.received: list[Received] = []
        self.failing_until = 0.0
        self.failing_types: set[str] | None = None
        """With `failing_until`: only these hook types fail (None: all)."""
        self.hold = threading.Event()
        self.hold.set()  # set: answer; cleared: hang until set again
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                request = json.loads(raw)
                receiver.hold.wait()
                failing = receiver.failing_types is None or request["Type"] in receiver.failing_types
                if failing and time.monotonic() < receiver.failing_until:
                    self.send_response(500)
                    self.end_headers()
                    return
                with receiver._lock:
                    receiver.received.append(Received(request, dict(self.headers.items()), raw))
                status, answer = receiver.policy(request)
                body = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def of_type(self, kind: str) -> list[Received]:
        with self._lock:
            return [item for item in self.received if item.type == kind]

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()
