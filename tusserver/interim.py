"""Informational (1xx) responses, which ASGI cannot express: the `104 (Upload Resumption Supported)`
of IETF Resumable Uploads.

ASGI has no message for a general interim response (its one extension, `http.response.early_hint`, is
103 with `Link` headers only, and uvicorn's HTTP/1.1 protocols implement none: `httptools_impl` and
`h11_impl` accept `http.response.start` / `http.response.body` only, and write `100 Continue` on their
own). So the connection protocol the server runs (`InterimHttpToolsProtocol`, which `tusserver serve`
uses) puts a callable into each request's scope, under `scope["extensions"][EXTENSION]["send"]`: it
writes an interim response straight to the transport, before the final response has started.
`send_interim` is what the app calls; under any other ASGI server (the extension is absent) it does
nothing and returns False, which the draft allows (a server "not capable of sending interim
responses", §4.2.2).

An interim response is never sent to an HTTP/1.0 request (RFC 9110 §15.2), after the final response
started, or on a closing connection. `100 Continue` is untouched: uvicorn still sends it when the app
first reads the body of a request that expects it (the draft: a 104 never replaces it, §5).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from tusserver.http_limits import LimitedHttpToolsProtocol
from tusserver.middleware import Scope
from tusserver.request_bodies import ChunkedBodyProtocol
from tusserver.write_batching import BatchedTransport

EXTENSION = "tusserver.interim"
_REASONS = {104: b"Upload Resumption Supported"}

Sender = Callable[[int, Iterable[tuple[str, str]]], bool]


def send_interim(scope: Scope, status: int, headers: Iterable[tuple[str, str]]) -> bool:
    """Send a 1xx response now if the server can; True if it was written."""
    extension = scope.get("extensions", {}).get(EXTENSION)
    if not extension:
        return False
    sender: Sender = extension["send"]
    return sender(status, headers)


def _interim_bytes(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    reason = _REASONS.get(status) or HTTPStatus(status).phrase.encode()
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    for name, value in headers:
        lines.append(name.encode("latin-1") + b": " + value.encode("latin-1") + b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def _sender(cycle: RequestResponseCycle) -> Sender:
    """The request's interim sender. It holds its cycle weakly: the cycle's scope holds the sender,
    and a strong reference back would make every request a reference cycle that only the garbage
    collector frees (13 objects a request; its collections were 4 % of small requests' CPU time)."""
    cycle_ref = weakref.ref(cycle)

    def send(status: int, headers: Iterable[tuple[str, str]]) -> bool:
        if not 100 <= status < 200 or status == 101:
            raise ValueError(f"not an informational status: {status}")
        cycle = cycle_ref()
        if cycle is None:
            return False  # the request is over
        scope: dict[str, Any] = cycle.scope  # type: ignore[assignment]
        if scope.get("http_version", "1.1") != "1.1":
            return False
        if cycle.response_started or cycle.disconnected or cycle.transport.is_closing():
            return False
        cycle.transport.write(_interim_bytes(status, headers))
        return True

    return send


class InterimHttpToolsProtocol(ChunkedBodyProtocol, LimitedHttpToolsProtocol):
    """The server's protocol: head limits, request bodies without copies (`request_bodies`), the
    interim-response extension in every request, and small writes batched per turn of the event
    loop (`write_batching`)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(BatchedTransport(transport, self.loop))

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = self.cycle
        # uvicorn made this request's cycle (and scheduled its task, which has not run yet) unless the
        # request was an upgrade or was refused; the scope dict is the one the app will get.
        if cycle is not None and cycle.scope is self.scope:
            extensions = self.scope.setdefault("extensions", {})
            extensions[EXTENSION] = {"send": _sender(cycle)}
