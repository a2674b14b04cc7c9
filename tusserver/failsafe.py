"""The last resort when a request meets a bug: `answer_failure`.

An exception no handler expected (anything but a `TusError`, which the endpoint turns into its own
answer) is logged once, with its traceback, and answered `500` with a one-line body. `front.Front`
calls this inside the CORS and tus rules, so that answer still carries `Tus-Resumable` and the CORS
headers a browser needs to read it, and it is a complete response, so the client's keep-alive
connection stays usable. If the response had already begun (a download that failed half way), the
connection is closed instead, which is the only way left to tell the client the body is incomplete.

A request the server cancels because its graceful shutdown ran out of time (a download stuck on a
client that stopped reading) ends quietly too: 503 + Retry-After if nothing was sent yet, else the
connection closes; no traceback, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging

from tusserver.middleware import Exchange, Scope, Send, send_text
from tusserver.statements import RETRY_AFTER_SECONDS

log = logging.getLogger(__name__)
RETRY = (b"retry-after", RETRY_AFTER_SECONDS.encode())


async def answer_failure(failure: BaseException, scope: Scope, exchange: Exchange, send: Send) -> None:
    """Answer a request whose handler raised `failure` (an `Exception` or a cancellation); the
    exchange's status tells whether the answer has started. Returning without finishing a started
    answer makes the server close the connection."""
    method = scope["method"]
    if isinstance(failure, asyncio.CancelledError):
        log.info("request_cancelled method=%s path=%s reason=shutdown", method, scope["path"])
        if not exchange.status:
            await send_text(send, method, 503, "server is shutting down, retry", RETRY)
        return
    log.error("internal_error method=%s path=%s", method, scope["path"], exc_info=failure)
    if not exchange.status:
        await send_text(send, method, 500, "internal server error")
