"""`TusEndpoint`: routes a request of the tus endpoint (`<base>`, `<base>/<upload_id>`) to its handler.

Every upload request passes here, so this is the whole of its routing: one string test on the path
instead of Starlette's router, its two exception layers and its per-route wrapper (together about a
fifth of a small request's CPU time). A `TusError` the handler raises becomes its short `text/plain`
answer here; anything else propagates to `FailsafeMiddleware`. A route of the application that the
tus paths would shadow (the demo page, probes or the operator page under a base path of `/`) keeps
its precedence: such a path is left to Starlette.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Match

from tusserver import ietf_handlers
from tusserver.errors import TusError
from tusserver.middleware import Receive, Scope, Send, header_key

Handler = Callable[[Request], Awaitable[Response]]


class TusEndpoint:
    def __init__(self, base_path: str, other_routes: Sequence[BaseRoute]) -> None:
        """`base_path` ends with `/`; `other_routes` are the application's other routes, which win
        where a path is theirs too."""
        self.base = base_path
        self.bare_base = base_path.rstrip("/") if base_path != "/" else base_path
        self.shadowing = [route for route in other_routes if _may_overlap(route, base_path)]

    def handler_for(self, scope: Scope) -> Handler | None:
        """The handler of this request's path (with `path_params` set), or None if it is not ours."""
        path = _route_path(scope)
        if path == self.base or path == self.bare_base:
            handler: Handler = ietf_handlers.collection
            params = {}
        elif path.startswith(self.base) and "/" not in path[len(self.base) :]:
            handler, params = ietf_handlers.resource, {"upload_id": path[len(self.base) :]}
        else:
            return None
        if self.shadowing and any(route.matches(scope)[0] is not Match.NONE for route in self.shadowing):
            return None
        scope["path_params"] = params
        return handler

    async def serve(self, handler: Handler, scope: Scope, receive: Receive, send: Send) -> None:
        request = EndpointRequest(scope, receive, send)
        try:
            response = await handler(request)
        except TusError as problem:
            response = error_response(request.method, problem)
        await response(scope, receive, send)


class RequestHeaders(Headers):
    """Starlette's request headers, with a `get` that finds a missing header without raising
    (`Mapping.get` catches the `KeyError` of `__getitem__`: a few microseconds for each optional
    tus header a request leaves out)."""

    def get(self, key: str, default: Any = None) -> Any:
        name = header_key(key)
        for header, value in self._list:
            if header == name:
                return value.decode("latin-1")
        return default


class EndpointRequest(Request):
    """The request the tus handlers get: its headers are `RequestHeaders`."""

    @functools.cached_property
    def headers(self) -> Headers:
        return RequestHeaders(scope=self.scope)


def error_response(method: str, problem: TusError) -> Response:
    """A `TusError` as its answer: the status, headers and a one-line body (none for HEAD)."""
    body = "" if method == "HEAD" else problem.message + "\n"
    return PlainTextResponse(body, status_code=problem.status, headers=problem.headers)


def _may_overlap(route: BaseRoute, base_path: str) -> bool:
    path = getattr(route, "path", None)
    return not isinstance(path, str) or path.startswith(base_path) or path == base_path.rstrip("/")


def _route_path(scope: Scope) -> str:
    """The path below the ASGI `root_path` (as Starlette's routing sees it)."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    rest = path[len(root_path) :]
    return rest if rest == "" or rest.startswith("/") else path
