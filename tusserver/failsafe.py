"""`FailsafeMiddleware`: the last resort when a request meets a bug.

An exception no handler expected (anything but a `TusError`, which `app.py` turns into its own answer)
is logged once, with its traceback, and answered `500` with a one-line body. It sits inside the CORS
and tus middleware, so that answer still carries `Tus-Resumable` and the CORS headers a browser needs
to read it, and it is a complete response, so the client's keep-alive connection stays usable. If the
response had already begun (a download that failed half way), the connection is closed instead, which
is the only way left to tell the client the body is incomplete.
"""

from __future__ import annotations

import logging

from tusserver.middleware import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)
_BODY = b"internal server error\n"


class FailsafeMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("internal_error method=%s path=%s", scope["method"], scope["path"])
            if not started:
                await _answer_500(scope["method"], send)
            # else: return without finishing the response; the server closes the connection


async def _answer_500(method: str, send: Send) -> None:
    body = b"" if method == "HEAD" else _BODY
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(_BODY)).encode()),
    ]
    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": body})
