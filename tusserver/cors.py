"""`Cors`: lets browsers on allowed origins use the tus endpoint.

A preflight (OPTIONS with `Access-Control-Request-Method`) from an allowed origin is answered here,
before the tus rules run, so it never meets a 412 (PROTOCOL.md C-O4). Every other response to an
allowed origin carries `Access-Control-Allow-Origin` and exposes every header a tus client reads.
A preflight allows the tus and IETF Resumable Uploads request headers plus whatever other header names
the browser asks for in `Access-Control-Request-Headers` (an application's own, e.g. an auth token):
the origin is what CORS restricts here, not the header names.
Credentials are off unless configured, and never combined with `*`.
"""

from __future__ import annotations

import re

from tusserver.middleware import Answer, Exchange, HeaderIndex, Scope

ALLOW_METHODS = "POST, HEAD, PATCH, OPTIONS, GET, DELETE"
ALLOW_HEADERS = (
    "Authorization, Origin, X-Requested-With, X-Request-ID, X-HTTP-Method-Override, Content-Type, "
    "Upload-Length, Upload-Offset, Tus-Resumable, Upload-Metadata, Upload-Defer-Length, Upload-Concat, "
    "Upload-Checksum, Range, Upload-Complete, Upload-Draft-Interop-Version, Content-Disposition"
)
EXPOSE_HEADERS = (
    "Location, Upload-Offset, Upload-Length, Upload-Metadata, Upload-Defer-Length, Upload-Concat, "
    "Upload-Expires, Tus-Version, Tus-Resumable, Tus-Max-Size, Tus-Extension, Tus-Checksum-Algorithm, "
    "Content-Range, Content-Disposition, Content-Length, Upload-Complete, Upload-Limit, "
    "Upload-Draft-Interop-Version, Accept-Patch, Accept-Ranges, Cache-Control, ETag, Last-Modified, "
    "Retry-After, X-Request-ID"
)
MAX_AGE = "86400"
_LISTED = frozenset(name.strip().lower() for name in ALLOW_HEADERS.split(","))
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class Cors:
    def __init__(self, origins: str, allow_credentials: bool = False) -> None:
        listed = {origin.strip().rstrip("/") for origin in origins.split(",") if origin.strip()}
        self.any_origin = "*" in listed
        self.origins = set() if listed <= {"none"} else listed - {"*"}
        self.allow_credentials = allow_credentials and not self.any_origin

    def allows(self, origin: str) -> bool:
        return self.any_origin or origin in self.origins

    def check(self, scope: Scope, headers: HeaderIndex, exchange: Exchange) -> Answer | None:
        """The preflight's answer, for a preflight from an allowed origin; else None, after adding
        the CORS headers to the answer of a request from an allowed origin."""
        origin_bytes = headers.get(b"origin")
        origin = origin_bytes.decode("latin-1") if origin_bytes else None
        if origin is None or not self.allows(origin):
            return None
        if scope["method"] == "OPTIONS" and headers.get(b"access-control-request-method"):
            requested = headers.get(b"access-control-request-headers") or b""
            return self._preflight(origin, requested.decode("latin-1"))
        exchange.extra_headers.extend(
            [(b"access-control-expose-headers", EXPOSE_HEADERS.encode()), *self._origin_headers(origin)]
        )
        return None

    def _origin_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        if self.any_origin:
            return [(b"access-control-allow-origin", b"*")]
        headers = [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
        if self.allow_credentials:
            headers.append((b"access-control-allow-credentials", b"true"))
        return headers

    def _preflight(self, origin: str, requested: str) -> Answer:
        headers = [
            (b"access-control-allow-methods", ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", allow_headers(requested).encode()),
            (b"access-control-max-age", MAX_AGE.encode()),
            (b"content-length", b"0"),
            *self._origin_headers(origin),
        ]
        return Answer(200, headers)


def allow_headers(requested: str) -> str:
    """`Access-Control-Allow-Headers`: the tus and IETF headers, plus the valid header names asked for
    that are not among them (each once, as asked)."""
    extra: dict[str, None] = {}
    for name in requested.split(","):
        name = name.strip()
        if name and _TOKEN.fullmatch(name) and name.lower() not in _LISTED:
            extra.setdefault(name.lower())
    return ", ".join([ALLOW_HEADERS, *extra]) if extra else ALLOW_HEADERS
