"""`AccessMiddleware`, the outermost layer: gives each request its ID (`X-Request-ID` if the client
sent a sane one, else a new one, echoed in the response) and its `Exchange`, whose headers (this
layer's and those the layers inside add) it puts on the answer, counts it (`tusserver_http_requests_total`,
duration histograms) and logs one `request` line when it ends: method, path, status, body bytes
stored, duration. Paths only: upload URLs are credentials, the host is never logged. Probes and
scrapes (`quiet_paths`) are logged at DEBUG.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Collection

from tusserver import metrics
from tusserver.logs import RequestContext, enter_request, leave_request
from tusserver.middleware import EXCHANGE, ASGIApp, Exchange, Message, Receive, Scope, Send, request_header

log = logging.getLogger("tusserver.access")
_REQUEST_ID = b"x-request-id"
_SANE_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_IDS = random.Random()  # seeded from the OS once; a request ID must be unique, not secret


def _new_request_id() -> str:
    """16 hex digits without a system call (`secrets` asks the kernel every time)."""
    return f"{_IDS.getrandbits(64):016x}"


class AccessMiddleware:
    def __init__(self, app: ASGIApp, quiet_paths: Collection[str] = ()) -> None:
        self.app = app
        self.quiet_paths = frozenset(quiet_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        given = request_header(scope, _REQUEST_ID)
        request_id = given.decode() if given and _SANE_ID.fullmatch(given) else _new_request_id()
        exchange = scope[EXCHANGE] = Exchange([(_REQUEST_ID, request_id.encode())])
        client = scope.get("client")
        context = RequestContext(
            request_id, scope["method"], scope["path"], f"{client[0]}:{client[1]}" if client else ""
        )

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                message["headers"] = [*message.get("headers", []), *exchange.extra_headers]
            await send(message)

        token = enter_request(context)
        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            leave_request(token)
            self._record(context, exchange.status, time.monotonic() - started)

    def _record(self, context: RequestContext, status: int, seconds: float) -> None:
        method = context.method if context.method in _METHODS else "OTHER"
        answered = str(status) if status else "none"  # "none": the client left before any answer
        metrics.request_answered(method, answered, seconds)
        level = logging.DEBUG if context.path in self.quiet_paths else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "request method=%s path=%s status=%s bytes=%d duration_ms=%.1f upload_id=%s client=%s "
                "request_id=%s",
                context.method, context.path, answered, context.bytes_in, seconds * 1000,
                context.upload_id, context.client, context.request_id,
            )  # fmt: skip
