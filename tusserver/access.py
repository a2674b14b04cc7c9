"""`AccessLog`, the first and the last step of every request (`front.Front` runs it): gives each
request its ID (`X-Request-ID` if the client sent a sane one, else a new one, echoed in the answer)
and its `Exchange`, on which the steps after it add the answer's headers; when the request ends it
counts it (`tusserver_http_requests_total`, duration histograms) and logs one `request` line:
method, path, status, body bytes stored, duration. Paths only: upload URLs are credentials, the
host is never logged. Probes and scrapes (`quiet_paths`) are logged at DEBUG.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Collection

from tusserver import metrics
from tusserver.logs import RequestContext
from tusserver.middleware import Exchange, HeaderIndex, Scope

log = logging.getLogger("tusserver.access")
_REQUEST_ID = b"x-request-id"
_SANE_ID = re.compile(rb"[A-Za-z0-9._:@/+=-]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_IDS = random.Random()  # seeded from the OS once; a request ID must be unique, not secret


def _new_request_id() -> str:
    """16 hex digits without a system call (`secrets` asks the kernel every time)."""
    return f"{_IDS.getrandbits(64):016x}"


class AccessLog:
    def __init__(self, quiet_paths: Collection[str] = ()) -> None:
        self.quiet_paths = frozenset(quiet_paths)

    def begin(self, scope: Scope, headers: HeaderIndex) -> tuple[Exchange, RequestContext]:
        """A request starts: its exchange (with `X-Request-ID` for the answer) and its context."""
        given = headers.get(_REQUEST_ID)
        request_id = given.decode() if given and _SANE_ID.fullmatch(given) else _new_request_id()
        exchange = Exchange([(_REQUEST_ID, request_id.encode())])
        return exchange, RequestContext(request_id, scope["method"], scope["path"], scope.get("client"))

    def end(self, context: RequestContext, status: int, started: float) -> None:
        """A request that began at `started` (`time.monotonic()`) ended, answered with `status` (0:
        never): count it and log its line."""
        seconds = time.monotonic() - started
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
