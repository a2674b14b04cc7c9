"""tus core (PROTOCOL.md §1): OPTIONS, HEAD, PATCH, Tus-Resumable, routing; through the ASGI app."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import BASE, create, offset_of, patch, stored_bytes, upload_ids
from tusserver import Settings

pytestmark = pytest.mark.anyio


async def test_options_advertises_version_and_extensions_c_o1_c_h4_c_h5(client: httpx.AsyncClient) -> None:
    response = await client.options(BASE, headers={"Tus-Resumable": ""})
    assert response.status_code == 200
    assert re.fullmatch(r"\d+\.\d+\.\d+(,\d+\.\d+\.\d+)*", response.headers["Tus-Version"])
    assert response.headers["Tus-Extension"].split(",") == [
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "termination",
        "checksum",
        "expiration",
        "concatenation",
    ]
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert "Tus-Max-Size" not in response.headers


async def test_options_ignores_tus_resumable_c_o2(client: httpx.AsyncClient) -> None:
    response = await client.options(BASE, headers={"Tus-Resumable": "0.0.1"})
    assert response.status_code == 200


async def test_options_shows_configured_max_size_c_h6(tmp_path: Path, database_url: str) -> None:
    from tests.conftest import app_client

    settings = Settings(data_dir=tmp_path / "d", database_url=database_url, max_size=1024)
    async with app_client(settings) as client:
        response = await client.options(BASE)
    assert response.headers["Tus-Max-Size"] == "1024"


@pytest.mark.parametrize("version", [None, "0.0.1", "1.0", "2.0.0"])
@pytest.mark.parametrize("method", ["POST", "HEAD", "PATCH", "DELETE"])
@pytest.mark.local_storage
async def test_unsupported_tus_resumable_is_412_and_not_processed_c_h2_c_h3(
    client: httpx.AsyncClient, settings: Settings, method: str, version: str | None
) -> None:
    path = await create(client, 5)
    before = upload_ids(settings.resolved_database_url)
    headers = {"Upload-Length": "5", "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
    request = client.build_request(
        method, BASE if method == "POST" else path, headers=headers, content=b"abcde"
    )
    if version is None:
        del request.headers["Tus-Resumable"]
    else:
        request.headers["Tus-Resumable"] = version
    response = await client.send(request)
    assert response.status_code == 412
    assert response.headers["Tus-Version"] == "1.0.0"
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert await offset_of(client, path) == 0  # PATCH and DELETE did nothing
    assert (
        upload_ids(settings.resolved_database_url) == before
    )  # POST created nothing, DELETE removed nothing
    assert list((settings.data_dir / "uploads").iterdir()) == []  # PATCH stored nothing


async def test_head_reports_state_and_forbids_caching_c_head1_2_3_5(client: httpx.AsyncClient) -> None:
    path = await create(client, 100)
    response = await client.head(path)
    assert response.status_code == 200
    assert response.headers["Upload-Offset"] == "0"
    assert response.headers["Upload-Length"] == "100"
    assert "no-store" in response.headers["Cache-Control"]
    assert "Upload-Metadata" not in response.headers
    assert response.content == b""


async def test_head_unknown_upload_is_404_without_offset_or_body_c_head4_c_head10(
    client: httpx.AsyncClient,
) -> None:
    response = await client.head(BASE + "0" * 32)
    assert response.status_code == 404
    assert "Upload-Offset" not in response.headers
    assert response.content == b""
    assert response.headers["Tus-Resumable"] == "1.0.0"


async def test_patch_appends_and_returns_new_offset_c_p5_c_p9(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    path = await create(client, 33)
    for index, piece in enumerate([b"a" * 11, b"b" * 11, b"c" * 11]):
        response = await patch(client, path, 11 * index, piece)
        assert response.status_code == 204
        assert response.headers["Upload-Offset"] == str(11 * (index + 1))
        assert response.content == b""
    head = await client.head(path)
    assert (head.headers["Upload-Offset"], head.headers["Upload-Length"]) == ("33", "33")
    assert stored_bytes(settings.data_dir, path) == b"a" * 11 + b"b" * 11 + b"c" * 11


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/octet-stream"])
async def test_patch_requires_offset_octet_stream_c_p1(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    path = await create(client, 5)
    headers = {"Upload-Offset": "0"}
    if content_type:
        headers["Content-Type"] = content_type
    response = await client.patch(path, content=b"abcde", headers=headers)
    assert response.status_code == 415
    assert "application/offset+octet-stream" in response.text
    assert await offset_of(client, path) == 0


@pytest.mark.parametrize("offset", [None, "-5", "abc", "1.5", "", "+0", str(2**63)])
async def test_patch_needs_a_valid_offset_c_p2_c_h7(client: httpx.AsyncClient, offset: str | None) -> None:
    path = await create(client, 5)
    headers = {"Content-Type": "application/offset+octet-stream"}
    if offset is not None:
        headers["Upload-Offset"] = offset
    response = await client.patch(path, content=b"abcde", headers=headers)
    assert response.status_code == 400
    assert "Upload-Offset" in response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    assert await offset_of(client, path) == 0


@pytest.mark.local_storage  # reads the bytes of an unfinished upload
async def test_offset_mismatch_is_409_with_current_offset_c_p3_c_p4(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    path = await create(client, 22)
    assert (await patch(client, path, 0, b"x" * 11)).status_code == 204
    for wrong in (0, 5, 12):
        response = await patch(client, path, wrong, b"y" * 11)
        assert response.status_code == 409
        assert response.headers["Upload-Offset"] == "11"
    assert await offset_of(client, path) == 11
    assert stored_bytes(settings.data_dir, path)[:11] == b"x" * 11


async def test_patch_unknown_upload_is_404_c_p6(client: httpx.AsyncClient) -> None:
    response = await patch(client, BASE + "f" * 32, 0, b"abc")
    assert response.status_code == 404


@pytest.mark.local_storage  # reads the bytes of an unfinished upload
async def test_bytes_beyond_length_are_413_and_not_stored_c_p7(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    path = await create(client, 5)
    response = await patch(client, path, 0, b"0123456789ab")
    assert response.status_code == 413
    assert await offset_of(client, path) == 0
    assert stored_bytes(settings.data_dir, path) == b""


async def test_chunked_body_beyond_length_stores_exactly_the_length_s1(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    path = await create(client, 5)

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the body goes chunked
        yield b"0123"
        yield b"456789"

    headers = {"Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
    response = await client.patch(path, content=chunks(), headers=headers)
    # as tusd: the bytes up to the length count and the answer says so; the upload never completes
    # while the answer is an error (issue 7 point 10)
    assert (response.status_code, response.headers["Upload-Offset"]) == (204, "5")
    assert await offset_of(client, path) == 5
    assert stored_bytes(settings.data_dir, path) == b"01234"


async def test_chunked_checksummed_body_beyond_length_stores_nothing(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    path = await create(client, 5)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"0123"
        yield b"456789"

    digest = base64.b64encode(hashlib.sha1(b"0123456789").digest()).decode()
    headers = {
        "Content-Type": "application/offset+octet-stream",
        "Upload-Offset": "0",
        "Upload-Checksum": f"sha1 {digest}",
    }
    response = await client.patch(path, content=chunks(), headers=headers)
    assert response.status_code == 413
    assert await offset_of(client, path) == 0


async def test_empty_patch_keeps_offset_c_p10(client: httpx.AsyncClient) -> None:
    path = await create(client, 10)
    assert (await patch(client, path, 0, b"12345")).status_code == 204
    response = await patch(client, path, 5, b"")
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "5"


async def test_patch_on_complete_upload_c_p11(client: httpx.AsyncClient, settings: Settings) -> None:
    path = await create(client, 3)
    assert (await patch(client, path, 0, b"abc")).status_code == 204
    empty = await patch(client, path, 3, b"")
    assert (empty.status_code, empty.headers["Upload-Offset"]) == (204, "3")
    assert (await patch(client, path, 3, b"more")).status_code == 413
    assert stored_bytes(settings.data_dir, path) == b"abc"


@pytest.mark.parametrize("collection", ["/files", "/files/"])
async def test_collection_with_and_without_slash_cr13(client: httpx.AsyncClient, collection: str) -> None:
    response = await client.post(collection, headers={"Upload-Length": "1"})
    assert response.status_code == 201
    assert response.headers["Location"].startswith("http://testserver/files/")


async def test_wrong_method_is_405_with_allow_cr14(client: httpx.AsyncClient) -> None:
    on_collection = await client.request("PUT", BASE)
    assert on_collection.status_code == 405
    assert on_collection.headers["Allow"] == "OPTIONS, POST"
    path = await create(client, 1)
    on_upload = await client.post(path, headers={"Upload-Length": "1"})
    assert on_upload.status_code == 405
    assert on_upload.headers["Allow"] == "OPTIONS, HEAD, GET, PATCH, DELETE"
    assert on_upload.headers["Tus-Resumable"] == "1.0.0"
    invented = await client.request("BREW" * 100, path)  # not echoed back
    assert (invented.status_code, invented.text) == (405, "this method not allowed here\n")
    assert invented.headers["Allow"] == "OPTIONS, HEAD, GET, PATCH, DELETE"


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/files/..%2F..%2Fetc%2Fpasswd",
        b"/files/..%5Cvictim",
        b"/files/abc%00",
        b"/files/%2e%2e",
        b"/files/" + b"A" * 32,
        b"/files/../tusserver.db",
        b"/files/..",
    ],
)
async def test_path_tricks_never_reach_the_disk_r1(
    client: httpx.AsyncClient, settings: Settings, raw_path: bytes
) -> None:
    victim = settings.data_dir / "victim"
    victim.write_bytes(b"keep me")
    for method in ("HEAD", "PATCH", "DELETE"):
        request = client.build_request(
            method,
            "http://testserver",
            headers={"Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"},
            content=b"x" if method == "PATCH" else None,
        )
        request.url = request.url.copy_with(raw_path=raw_path)
        response = await client.send(request)
        assert response.status_code == 404, (method, raw_path)
    assert victim.read_bytes() == b"keep me"


async def test_method_override_is_honoured_c_h8(client: httpx.AsyncClient) -> None:
    path = await create(client, 3)
    headers = {
        "X-HTTP-Method-Override": "PATCH",
        "Content-Type": "application/offset+octet-stream",
        "Upload-Offset": "0",
    }
    response = await client.post(path, content=b"abc", headers=headers)
    assert (response.status_code, response.headers["Upload-Offset"]) == (204, "3")
    deleted = await client.post(path, headers={"X-HTTP-Method-Override": "DELETE"})
    assert deleted.status_code == 204
    assert (await client.head(path)).status_code == 404


@pytest.mark.local_storage
async def test_bytes_beyond_the_committed_offset_are_debris_and_get_overwritten(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    path = await create(client, 10)
    assert (await patch(client, path, 0, b"01234")).status_code == 204
    stored = settings.data_dir / "uploads" / path.rsplit("/", 1)[1]
    with stored.open("ab") as file:  # what an aborted request or a crash can leave behind
        file.write(b"GARBAGE-GARBAGE")
    assert await offset_of(client, path) == 5
    assert (await patch(client, path, 5, b"56789")).status_code == 204
    assert stored.read_bytes() == b"0123456789"  # debris overwritten, file cut to Upload-Length
