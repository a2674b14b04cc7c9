"""creation-defer-length (PROTOCOL.md §5): the length declared by a later PATCH, once."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import app_client
from tests.helpers import create, patch, stored_bytes
from tusserver import Settings

pytestmark = pytest.mark.anyio


async def test_deferred_upload_reports_defer_length_d2_d3(client: httpx.AsyncClient) -> None:
    path = await create(client, None)
    head = await client.head(path)
    assert head.headers["Upload-Defer-Length"] == "1"
    assert "Upload-Length" not in head.headers
    assert head.headers["Upload-Offset"] == "0"


async def test_length_declared_by_patch_d4_d11(client: httpx.AsyncClient, settings: Settings) -> None:
    path = await create(client, None)
    assert (await patch(client, path, 0, b"Hello, ")).status_code == 204  # no length yet: fine
    response = await patch(client, path, 7, b"tus!\n", Upload_Length="12")
    assert (response.status_code, response.headers["Upload-Offset"]) == (204, "12")
    head = await client.head(path)
    assert head.headers["Upload-Length"] == "12"
    assert "Upload-Defer-Length" not in head.headers
    assert stored_bytes(settings.data_dir, path) == b"Hello, tus!\n"


async def test_declared_length_cannot_change_d5(client: httpx.AsyncClient) -> None:
    path = await create(client, None)
    assert (await patch(client, path, 0, b"", Upload_Length="100")).status_code == 204
    same = await patch(client, path, 0, b"abc", Upload_Length="100")  # idempotent repeat: accepted
    assert same.status_code == 204
    changed = await patch(client, path, 3, b"def", Upload_Length="200")
    assert changed.status_code == 400
    assert "cannot change" in changed.text
    assert (await client.head(path)).headers["Upload-Length"] == "100"


async def test_length_on_a_sized_upload_must_match_d6(client: httpx.AsyncClient) -> None:
    path = await create(client, 100)
    assert (await patch(client, path, 0, b"abc", Upload_Length="50")).status_code == 400
    assert (await client.head(path)).headers["Upload-Length"] == "100"


async def test_declared_length_below_offset_is_400_d7(client: httpx.AsyncClient) -> None:
    path = await create(client, None)
    assert (await patch(client, path, 0, b"0123456789")).status_code == 204
    response = await patch(client, path, 10, b"", Upload_Length="5")
    assert response.status_code == 400
    assert "Upload-Defer-Length" in (await client.head(path)).headers


async def test_declared_length_body_overflow_is_413(client: httpx.AsyncClient) -> None:
    path = await create(client, None)
    assert (await patch(client, path, 0, b"0123456789", Upload_Length="4")).status_code == 413


async def test_max_size_applies_to_deferred_uploads_d8_d9(tmp_path: Path, database_url: str) -> None:
    settings = Settings(data_dir=tmp_path / "d", database_url=database_url, max_size=10)
    async with app_client(settings) as client:
        path = await create(client, None)
        too_long = await patch(client, path, 0, b"", Upload_Length="11")
        assert too_long.status_code == 413
        assert (await patch(client, path, 0, b"0123456789a")).status_code == 413
        assert (await patch(client, path, 0, b"0123456789")).status_code == 204


async def test_empty_patch_declaring_length_completes_d10(client: httpx.AsyncClient) -> None:
    path = await create(client, None)
    assert (await patch(client, path, 0, b"abcdef")).status_code == 204
    response = await patch(client, path, 6, b"", Upload_Length="6")
    assert (response.status_code, response.headers["Upload-Offset"]) == (204, "6")
    head = await client.head(path)
    assert (head.headers["Upload-Offset"], head.headers["Upload-Length"]) == ("6", "6")
