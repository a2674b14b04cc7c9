"""creation and creation-with-upload (PROTOCOL.md §2-§4), and Upload-Metadata on the wire."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.conftest import app_client
from tests.helpers import BASE, create, offset_of, stored_bytes, upload_ids
from tusserver import Settings

pytestmark = pytest.mark.anyio

OCTETS = {"Content-Type": "application/offset+octet-stream"}


async def test_post_creates_upload_with_absolute_location_cr2_cr9(client: httpx.AsyncClient) -> None:
    response = await client.post(BASE, headers={"Upload-Length": "100"})
    assert response.status_code == 201
    location = response.headers["Location"]
    assert re.fullmatch(r"http://testserver/files/[0-9a-f]{32}", location)
    assert await offset_of(client, httpx.URL(location).path) == 0


async def test_each_post_gets_a_distinct_unguessable_id_cr10(client: httpx.AsyncClient) -> None:
    paths = {await create(client, 1) for _ in range(20)}
    assert len(paths) == 20
    for path in paths:
        assert (await client.head(path)).status_code == 200


@pytest.mark.parametrize(
    ("headers", "needle"),
    [
        ({}, "Upload-Length"),
        ({"Upload-Length": "-1"}, "Upload-Length"),
        ({"Upload-Length": "foo"}, "Upload-Length"),
        ({"Upload-Length": "1.5"}, "Upload-Length"),
        ({"Upload-Length": str(2**63)}, "Upload-Length"),
        ({"Upload-Defer-Length": "0"}, "Upload-Defer-Length"),
        ({"Upload-Defer-Length": "bad"}, "Upload-Defer-Length"),
        ({"Upload-Length": "5", "Upload-Defer-Length": "1"}, "mutually exclusive"),
        ({"Upload-Length": "5", "Upload-Metadata": "k not_base64!"}, "Upload-Metadata"),
    ],
)
@pytest.mark.local_storage
async def test_bad_creation_headers_are_400_and_create_nothing_cr3_cr4_cr5_cr8_m4(
    client: httpx.AsyncClient, settings: Settings, headers: dict[str, str], needle: str
) -> None:
    before = upload_ids(settings.resolved_database_url)
    response = await client.post(BASE, headers=headers)
    assert response.status_code == 400
    assert needle in response.text
    assert upload_ids(settings.resolved_database_url) == before
    assert list((settings.data_dir / "uploads").iterdir()) == []


async def test_zero_length_upload_is_complete_at_once_cr6(client: httpx.AsyncClient) -> None:
    path = await create(client, 0)
    head = await client.head(path)
    assert (head.headers["Upload-Offset"], head.headers["Upload-Length"]) == ("0", "0")


async def test_length_above_maximum_is_413_and_creates_nothing_cr7(tmp_path: Path, database_url: str) -> None:
    settings = Settings(data_dir=tmp_path / "d", database_url=database_url, max_size=1024 * 1024)
    async with app_client(settings) as client:
        before = upload_ids(database_url)
        response = await client.post(BASE, headers={"Upload-Length": str(2 * 1024 * 1024)})
        assert response.status_code == 413
        assert "maximum" in response.text
        assert upload_ids(database_url) == before
        assert (await client.post(BASE, headers={"Upload-Length": str(1024 * 1024)})).status_code == 201
        assert len(upload_ids(database_url) - before) == 1


async def test_content_type_of_a_bodiless_post_is_ignored_cr11(client: httpx.AsyncClient) -> None:
    response = await client.post(BASE, headers={"Upload-Length": "300", "Content-Type": "application/false"})
    assert response.status_code == 201


async def test_metadata_is_echoed_as_sent_m1_m2_m5_m6(client: httpx.AsyncClient) -> None:
    for header in (
        "filename dGVzdC50eHQ=,filetype dGV4dC9wbGFpbg==",
        "filename dGVzdA==,emptykey",
        "foo aGVsbG8=, bar d29ybGQ=",
    ):
        path = await create(client, 1, Upload_Metadata=header)
        assert (await client.head(path)).headers["Upload-Metadata"] == header


async def test_empty_metadata_header_means_none_m3(client: httpx.AsyncClient) -> None:
    path = await create(client, 1, Upload_Metadata="")
    assert "Upload-Metadata" not in (await client.head(path)).headers


async def test_post_with_body_appends_it_cu3(client: httpx.AsyncClient, settings: Settings) -> None:
    response = await client.post(BASE, headers={"Upload-Length": "12", **OCTETS}, content=b"Hello, tus!\n")
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "12"
    path = httpx.URL(response.headers["Location"]).path
    head = await client.head(path)
    assert (head.headers["Upload-Offset"], head.headers["Upload-Length"]) == ("12", "12")
    assert stored_bytes(settings.data_dir, path) == b"Hello, tus!\n"


async def test_post_with_partial_body_cu4(client: httpx.AsyncClient) -> None:
    response = await client.post(BASE, headers={"Upload-Length": "100", **OCTETS}, content=b"x" * 27)
    assert (response.status_code, response.headers["Upload-Offset"]) == (201, "27")
    assert await offset_of(client, httpx.URL(response.headers["Location"]).path) == 27


@pytest.mark.local_storage
async def test_post_body_larger_than_length_is_413_cu5(client: httpx.AsyncClient, settings: Settings) -> None:
    before = upload_ids(settings.resolved_database_url)
    response = await client.post(BASE, headers={"Upload-Length": "300", **OCTETS}, content=b"x" * 400)
    assert response.status_code == 413
    assert upload_ids(settings.resolved_database_url) == before
    for stored in (settings.data_dir / "uploads").iterdir():
        assert stored.read_bytes() == b""


@pytest.mark.local_storage
async def test_post_body_with_wrong_content_type_is_415_cu2(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    headers = {"Upload-Length": "12", "Content-Type": "text/plain"}
    before = upload_ids(settings.resolved_database_url)
    response = await client.post(BASE, headers=headers, content=b"Hello, tus!\n")
    assert response.status_code == 415
    assert upload_ids(settings.resolved_database_url) == before
    assert list((settings.data_dir / "uploads").iterdir()) == []


async def test_post_with_empty_octet_stream_body_cu9(client: httpx.AsyncClient) -> None:
    response = await client.post(BASE, headers={"Upload-Length": "5", **OCTETS}, content=b"")
    assert (response.status_code, response.headers["Upload-Offset"]) == (201, "0")
