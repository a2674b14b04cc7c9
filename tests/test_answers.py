"""The endpoint's own request and answer classes behave as Starlette's: `HeadersOnly` sends exactly
what `Response` sends for the same bodiless answer, `EndpointRequest` reads headers as `Request`."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers
from starlette.responses import Response

from tusserver.endpoint import EndpointRequest, RequestHeaders
from tusserver.handlers import HeadersOnly


@pytest.mark.parametrize("status", [200, 201, 204, 304, 412])
def test_headers_only_answers_as_starlette_would(status: int) -> None:
    headers = {"Upload-Offset": "0", "Location": "http://h/files/ab", "Cache-Control": "no-store"}
    ours, theirs = HeadersOnly(status, headers), Response(status_code=status, headers=headers)
    assert ours.raw_headers == theirs.raw_headers
    assert (ours.status_code, ours.body, ours.background) == (theirs.status_code, theirs.body, None)
    assert HeadersOnly(status).raw_headers == Response(status_code=status).raw_headers


def test_endpoint_request_headers_read_as_starlettes() -> None:
    raw = [(b"upload-length", b"10"), (b"x-dup", b"first"), (b"x-dup", b"second"), (b"h\xe9", b"\xe9")]
    scope = {"type": "http", "method": "POST", "path": "/files/", "headers": raw}
    ours, theirs = EndpointRequest(scope).headers, Headers(raw=raw)
    for name in ("Upload-Length", "upload-length", "X-Dup", "H\xe9", "Missing"):
        assert ours.get(name) == theirs.get(name)
        assert ours.get(name, "default") == theirs.get(name, "default")
    assert ours.items() == theirs.items()
    assert isinstance(ours, RequestHeaders)
