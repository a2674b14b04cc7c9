"""`Front`: the steps every HTTP request passes before and after its handler, in one coroutine.

In order: the access log (`access.AccessLog`: request ID, and at the end the count and the `request`
line), CORS (`cors.Cors`: a preflight is answered here), the tus rules (`middleware.TusRules`:
method override, `Host`, `Tus-Resumable`), then the tus endpoint (`endpoint.TusEndpoint`) or, for
any other path, Starlette's routes (probes, metrics, the operator page, the demo), with the last
resort (`failsafe.answer_failure`) around them. The steps are plain calls sharing the request's
`Exchange`, not ASGI layers wrapping each other: each layer was a coroutine of its own, awaited
and unwound on every request, and one `send` wrapper here puts the steps' headers on the answer.
"""

from __future__ import annotations

import asyncio
import time

from tusserver.access import AccessLog
from tusserver.cors import Cors
from tusserver.endpoint import TusEndpoint
from tusserver.failsafe import answer_failure
from tusserver.logs import enter_request, leave_request
from tusserver.middleware import ASGIApp, Message, Receive, Scope, Send, TusRules, header_index


class Front:
    def __init__(
        self, access: AccessLog, cors: Cors, rules: TusRules, endpoint: TusEndpoint, rest: ASGIApp
    ) -> None:
        """`rest`: the app for the paths that are not the tus endpoint's (Starlette's router)."""
        self.access = access
        self.cors = cors
        self.rules = rules
        self.endpoint = endpoint
        self.rest = rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """One HTTP request (`scope["type"] == "http"`)."""
        started = time.monotonic()
        headers = header_index(scope)
        exchange, context = self.access.begin(scope, headers)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                message["headers"] = [*message.get("headers", []), *exchange.extra_headers]
            await send(message)

        token = enter_request(context)
        try:
            answer = self.cors.check(scope, headers, exchange)
            if answer is None:
                scope, answer = self.rules.check(scope, headers, exchange)
            if answer is not None:
                await answer.send(send_with_headers, scope["method"])
                return
            try:
                handler = self.endpoint.handler_for(scope)
                if handler is None:
                    await self.rest(scope, receive, send_with_headers)
                else:
                    await self.endpoint.serve(handler, scope, receive, send_with_headers)
            except (Exception, asyncio.CancelledError) as failure:
                await answer_failure(failure, scope, exchange, send_with_headers)
        finally:
            leave_request(token)
            self.access.end(context, exchange.status, started)
