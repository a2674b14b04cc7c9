"""`TusRules`: the protocol rules that hold for every request; `Exchange`, how the steps before the
handler add response headers without each wrapping `send`; `Answer`, what such a step sends instead of
running the handler; the ASGI types and the request's header index.

`TusRules` applies `X-HTTP-Method-Override` before routing (C-H8), refuses an HTTP/1.1 request without `Host`
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


class Exchange:
    """One HTTP request's response, as the steps before its handler share it (made by `AccessLog`,
    the first): the headers each step adds to whatever answer goes out, and its status once it
    started (0 before). One `send` wrapper (`front.Front`'s) applies them to the answer."""

    __slots__ = ("extra_headers", "status")

    def __init__(self, extra_headers: list[tuple[bytes, bytes]]) -> None:
        self.extra_headers = extra_headers
        self.status = 0


@functools.lru_cache(maxsize=256)
def header_key(name: str) -> bytes:
    """A header name as ASGI carries it: lowercase bytes (made once per name)."""
    return name.lower().encode("latin-1")


HEADER_INDEX = "tusserver.header_index"
HeaderIndex = dict[bytes, bytes]


def header_index(scope: Scope) -> HeaderIndex:
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


class Answer:
    """A complete short answer given before any handler runs: a refusal, a CORS preflight."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> None:
        self.status = status
        self.headers = headers
        self.body = body

    async def send(self, send: Send, method: str) -> None:
        """Send it whole (its body left out for HEAD)."""
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else self.body})


def text_answer(status: int, text: str, *extra: tuple[bytes, bytes]) -> Answer:
    """A short `text/plain` answer: one line of text."""
    body = f"{text}\n".encode()
    headers = [
        *extra,
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    return Answer(status, headers, body)


async def send_text(send: Send, method: str, status: int, text: str, *extra: tuple[bytes, bytes]) -> None:
    """A complete short `text/plain` response (its body left out for HEAD)."""
    await text_answer(status, text, *extra).send(send, method)


class TusRules:
    def __init__(self, exempt_paths: Collection[str] = ()) -> None:
        """`exempt_paths`: paths (and what lies below them) that are no tus endpoint: probes,
        metrics, the operator page."""
        self.exempt = tuple(exempt_paths)
        self.exempt_below = tuple(path + "/" for path in exempt_paths)

    def check(self, scope: Scope, headers: HeaderIndex, exchange: Exchange) -> tuple[Scope, Answer | None]:
        """The scope the request goes on with (its method overridden, if asked), and the refusal to
        send instead of running it, if any. Adds `Tus-Resumable` to the answer's headers."""
        path = scope.get("path", "")
        if path in self.exempt or path.startswith(self.exempt_below):
            return scope, None
        override = headers.get(_OVERRIDE)
        if override:
            scope = dict(scope, method=override.decode("latin-1").strip().upper())

        interop = headers.get(_INTEROP)
        ietf = interop is not None and interop_of(interop.decode("latin-1")) is not None
        if not ietf:
            exchange.extra_headers.append(_VERSION_PAIR)
        if scope.get("http_version") == "1.1" and headers.get(b"host") is None:
            return scope, text_answer(400, "an HTTP/1.1 request needs a Host header")
        if not ietf and scope["method"] not in _EXEMPT and headers.get(_RESUMABLE) != _VERSION_PAIR[1]:
            version = (TUS_VERSION_HEADER.lower().encode(), TUS_VERSION.encode())
            return scope, text_answer(412, f"{TUS_RESUMABLE} must be {TUS_VERSION}", version)
        return scope, None
