"""`TusEndpoint`: routes a request of the tus endpoint (`<base>`, `<base>/<upload_id>`) to its handler.

Every upload request passes here, so this is the whole of its routing: one string test on the path
instead of Starlette's router, its two exception layers and its per-route wrapper (together about a
fifth of a small request's CPU time). A request that carries `Upload-Draft-Interop-Version` goes to
`ietf_handlers` (which hands a version it does not speak on to `handlers`), every other one straight
to `handlers`. A `TusError` the handler raises becomes its short `text/plain` answer here; anything
else propagates to the last resort (`failsafe.answer_failure`, called by `front.Front`). A route of
the application that the tus paths would shadow (the demo page, probes or the operator page under a
base path of `/`) keeps its precedence: such a path is left to Starlette.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request, empty_receive, empty_send
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Match

from tusserver import handlers, ietf_handlers
from tusserver.errors import TusError
from tusserver.ietf import INTEROP_VERSION
from tusserver.middleware import Receive, Scope, Send, header_index, header_key, request_header

Handler = Callable[[Request], Awaitable[Response]]
_INTEROP = header_key(INTEROP_VERSION)


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
        draft = request_header(scope, _INTEROP) is not None  # else tus 1.0, without the draft's layer
        if path == self.base or path == self.bare_base:
            handler: Handler = ietf_handlers.collection if draft else handlers.collection
            params = {}
        elif path.startswith(self.base) and "/" not in path[len(self.base) :]:
            handler = ietf_handlers.resource if draft else handlers.resource
            params = {"upload_id": path[len(self.base) :]}
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
    """Starlette's request headers, with a `get` that looks the name up in the request's header
    index (`middleware.header_index`) instead of scanning the list, and finds a missing header
    without raising (`Mapping.get` catches the `KeyError` of `__getitem__`: a few microseconds for
    each optional tus header a request leaves out)."""

    def __init__(self, scope: Scope) -> None:
        super().__init__(scope=scope)
        self._index = header_index(scope)

    def get(self, key: str, default: Any = None) -> Any:
        value = self._index.get(header_key(key))
        return default if value is None else value.decode("latin-1")


class EndpointRequest(Request):
    """The request the tus handlers get: its headers are `RequestHeaders`, made with it (Starlette's
    `headers` property finds them made; a `cached_property` took a lock on every first read)."""

    def __init__(self, scope: Scope, receive: Receive = empty_receive, send: Send = empty_send) -> None:
        super().__init__(scope, receive, send)
        self._headers = RequestHeaders(scope)


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
