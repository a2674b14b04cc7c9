"""`FailsafeMiddleware`: the last resort when a request meets a bug.

An exception no handler expected (anything but a `TusError`, which `app.py` turns into its own answer)
is logged once, with its traceback, and answered `500` with a one-line body. It sits inside the CORS
and tus middleware, so that answer still carries `Tus-Resumable` and the CORS headers a browser needs
to read it, and it is a complete response, so the client's keep-alive connection stays usable. If the
response had already begun (a download that failed half way), the connection is closed instead, which
is the only way left to tell the client the body is incomplete.

A request the server cancels because its graceful shutdown ran out of time (a download stuck on a
client that stopped reading) ends quietly too: 503 + Retry-After if nothing was sent yet, else the
connection closes; no traceback, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging

from tusserver.middleware import ASGIApp, Receive, Scope, Send, exchange_of, send_text
from tusserver.statements import RETRY_AFTER_SECONDS

log = logging.getLogger(__name__)
RETRY = (b"retry-after", RETRY_AFTER_SECONDS.encode())


class FailsafeMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = exchange_of(scope)  # its status tells whether the answer has started
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            log.info("request_cancelled method=%s path=%s reason=shutdown", scope["method"], scope["path"])
            if not exchange.status:
                await send_text(send, scope["method"], 503, "server is shutting down, retry", RETRY)
        except Exception:
            log.exception("internal_error method=%s path=%s", scope["method"], scope["path"])
            if not exchange.status:
                await send_text(send, scope["method"], 500, "internal server error")
            # else: return without finishing the response; the server closes the connection
