"""`HeadersOnly`: the answers of the upload requests that carry no body (201, 204, 200 to HEAD).

They are most of what the server sends, so they skip Starlette's general header handling (which
lowercases and encodes every header name on every answer) while sending exactly what its `Response`
would: the given headers, and `Content-Length: 0` where the status allows a body.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from starlette.responses import Response


class HeadersOnly(Response):
    """An answer without a body, with the given headers (names in any case)."""

    def __init__(self, status_code: int, headers: Mapping[str, str] | None = None) -> None:
        self.status_code = status_code
        self.background = None
        self.body = b""
        raw = [(_header_name(name), value.encode("latin-1")) for name, value in (headers or {}).items()]
        if status_code >= 200 and status_code not in (204, 304):
            raw.append(_NO_BODY)
        self.raw_headers = raw


_NO_BODY = (b"content-length", b"0")


@functools.lru_cache(maxsize=256)
def _header_name(name: str) -> bytes:
    return name.lower().encode("latin-1")
