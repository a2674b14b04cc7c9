"""`TusMiddleware`: the protocol rules that hold for every request, as pure ASGI; and `Exchange`, how
the layers around the app add response headers without each wrapping `send`.

It applies `X-HTTP-Method-Override` before routing (C-H8), refuses an HTTP/1.1 request without `Host`
with 400 (RFC 9112 §3.2: servers like httptools let it through) and requests without a supported
`Tus-Resumable` with 412 + `Tus-Version` before anything else runs (C-H2, C-H3; OPTIONS is exempt,
C-O2), and adds `Tus-Resumable` to every response, Starlette's own 404/405 included (C-H1). A request
of IETF Resumable Uploads (`Upload-Draft-Interop-Version` with a version `ietf.SUPPORTED` lists) is
exempt from both: it speaks the draft, not tus 1.0.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any

from tusserver.ietf import INTEROP_VERSION, interop_of
from tusserver.protocol import METHOD_OVERRIDE, TUS_RESUMABLE, TUS_VERSION, TUS_VERSION_HEADER

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_OVERRIDE = METHOD_OVERRIDE.lower().encode()
_RESUMABLE = TUS_RESUMABLE.lower().encode()
_INTEROP = INTEROP_VERSION.lower().encode()
_VERSION_PAIR = (_RESUMABLE, TUS_VERSION.encode())
# Methods a client may send without Tus-Resumable: preflights and plain downloads.
_EXEMPT = frozenset({"OPTIONS", "GET"})


EXCHANGE = "tusserver.exchange"


class Exchange:
    """One HTTP request's response, as the middleware layers share it (`scope[EXCHANGE]`, made by
    `AccessMiddleware`, the outermost): the headers each layer adds to whatever answer goes out,
    and its status once it started (0 before). One `send` wrapper (the access layer's) applies
    them, where each layer used to wrap `send` again: four calls for every message."""

    __slots__ = ("extra_headers", "status")

    def __init__(self, extra_headers: list[tuple[bytes, bytes]]) -> None:
        self.extra_headers = extra_headers
        self.status = 0


def exchange_of(scope: Scope) -> Exchange:
    exchange: Exchange = scope[EXCHANGE]
    return exchange


@functools.lru_cache(maxsize=256)
def header_key(name: str) -> bytes:
    """A header name as ASGI carries it: lowercase bytes (made once per name)."""
    return name.lower().encode("latin-1")


HEADER_INDEX = "tusserver.header_index"


def header_index(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by lowercase name, first value of each (`scope[HEADER_INDEX]`, made on
    first use): a request's layers and handlers look up a dozen headers, and a scan of the list for
    each cost more than making this once."""
    index: dict[bytes, bytes] | None = scope.get(HEADER_INDEX)
    if index is None:
        index = {}
        for key, value in scope["headers"]:
            if key not in index:
                index[key] = bytes(value)
        scope[HEADER_INDEX] = index
    return index


def request_header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (`name` in lowercase), or None."""
    return header_index(scope).get(name)


class TusMiddleware:
    def __init__(self, app: ASGIApp, exempt_paths: Collection[str] = ()) -> None:
        """`exempt_paths`: paths (and what lies below them) that are no tus endpoint: probes,
        metrics, the operator page."""
        self.app = app
        self.exempt = tuple(exempt_paths)
        self.exempt_below = tuple(path + "/" for path in exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in self.exempt or path.startswith(self.exempt_below):
            await self.app(scope, receive, send)
            return
        override = request_header(scope, _OVERRIDE)
        if override:
            scope = dict(scope, method=override.decode("latin-1").strip().upper())

        interop = request_header(scope, _INTEROP)
        ietf = interop is not None and interop_of(interop.decode("latin-1")) is not None
        if not ietf:
            exchange_of(scope).extra_headers.append(_VERSION_PAIR)
        if scope.get("http_version") == "1.1" and request_header(scope, b"host") is None:
            await send_text(send, scope["method"], 400, "an HTTP/1.1 request needs a Host header")
            return
        if (
            not ietf
            and scope["method"] not in _EXEMPT
            and request_header(scope, _RESUMABLE) != _VERSION_PAIR[1]
        ):
            version = (TUS_VERSION_HEADER.lower().encode(), TUS_VERSION.encode())
            text = f"{TUS_RESUMABLE} must be {TUS_VERSION}"
            await send_text(send, scope["method"], 412, text, version)
            return
        await self.app(scope, receive, send)


async def send_text(send: Send, method: str, status: int, text: str, *extra: tuple[bytes, bytes]) -> None:
    """A complete short `text/plain` response (its body left out for HEAD)."""
    body = f"{text}\n".encode()
    headers = [
        *extra,
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
