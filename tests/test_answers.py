"""`HeadersOnly` sends exactly what Starlette's `Response` sends for the same bodiless answer."""

from __future__ import annotations

import pytest
from starlette.responses import Response

from tusserver.answers import HeadersOnly


@pytest.mark.parametrize("status", [200, 201, 204, 304, 412])
def test_headers_only_answers_as_starlette_would(status: int) -> None:
    headers = {"Upload-Offset": "0", "Location": "http://h/files/ab", "Cache-Control": "no-store"}
    ours, theirs = HeadersOnly(status, headers), Response(status_code=status, headers=headers)
    assert ours.raw_headers == theirs.raw_headers
    assert (ours.status_code, ours.body, ours.background) == (theirs.status_code, theirs.body, None)
    assert HeadersOnly(status).raw_headers == Response(status_code=status).raw_headers
