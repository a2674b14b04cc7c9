"""termination (PROTOCOL.md §9): DELETE frees the upload; the URL is dead afterwards."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import BASE, create, patch
from tusserver import Settings

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("complete", [False, True])
@pytest.mark.local_storage
async def test_delete_removes_upload_and_bytes_t2_t3(
    client: httpx.AsyncClient, settings: Settings, complete: bool
) -> None:
    path = await create(client, 6)
    assert (await patch(client, path, 0, b"abcdef" if complete else b"abc")).status_code == 204
    stored = settings.data_dir / "uploads" / path.rsplit("/", 1)[1]
    assert stored.exists()
    response = await client.delete(path)
    assert response.status_code == 204
    assert response.content == b""
    assert not stored.exists()
    assert (await client.head(path)).status_code in {404, 410}
    assert (await patch(client, path, 3, b"def")).status_code in {404, 410}
    assert (await client.delete(path)).status_code in {404, 410}
    assert not stored.exists()


async def test_delete_unknown_upload_is_404_t4(client: httpx.AsyncClient) -> None:
    assert (await client.delete(BASE + "a" * 32)).status_code == 404


async def test_delete_leaves_other_uploads_alone(client: httpx.AsyncClient) -> None:
    keep = await create(client, 3)
    assert (await patch(client, keep, 0, b"xyz")).status_code == 204
    gone = await create(client, 3)
    assert (await client.delete(gone)).status_code == 204
    assert (await client.head(keep)).headers["Upload-Offset"] == "3"
