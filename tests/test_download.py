"""GET downloads of finished uploads: safe types, sanitised names, ETag and single ranges."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from tests.conftest import app_client
from tests.helpers import create, patch
from tests.servers import ServerProcess
from tusserver import Settings

pytestmark = pytest.mark.anyio
DATA = bytes(range(256)) * 40  # 10240 bytes


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def finished(client: httpx.AsyncClient, metadata: str = "") -> str:
    path = await create(client, len(DATA), Upload_Metadata=metadata)
    assert (await patch(client, path, 0, DATA)).status_code == 204
    return path


async def test_get_streams_the_bytes_without_tus_headers(client: httpx.AsyncClient) -> None:
    path = await finished(client)
    response = await client.get(path, headers={"Tus-Resumable": ""})  # a browser sends none
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["Content-Length"] == str(len(DATA))
    assert response.headers["Content-Type"] == "application/octet-stream"
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["ETag"].startswith('"')
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Security-Policy"] == "sandbox"


async def test_finished_upload_is_cacheable_and_answers_conditional_gets(client: httpx.AsyncClient) -> None:
    path = await finished(client)
    first = await client.get(path)
    etag, modified = first.headers["ETag"], first.headers["Last-Modified"]
    assert first.headers["Cache-Control"] == "private, max-age=3600"
    matching = [{"If-None-Match": etag}, {"If-None-Match": f'"other", W/{etag}'}, {"If-None-Match": "*"}]
    for conditions in [*matching, {"If-Modified-Since": modified}]:
        again = await client.get(path, headers=conditions)
        assert again.status_code == 304, conditions
        assert again.content == b""
        assert again.headers["ETag"] == etag
    for conditions in ({"If-None-Match": '"other"'}, {"If-Modified-Since": "Thu, 01 Jan 1970 00:00:00 GMT"},
                       {"If-Modified-Since": "not a date"}):  # fmt: skip
        again = await client.get(path, headers=conditions)
        assert again.status_code == 200, conditions
        assert again.content == DATA


@pytest.mark.local_storage
async def test_missing_file_is_410_before_any_header(client: httpx.AsyncClient, settings: Settings) -> None:
    path = await finished(client)
    (settings.uploads_dir / path.rsplit("/", 1)[1]).unlink()  # gone under its row, by hand
    response = await client.get(path)
    assert response.status_code == 410
    assert "Traceback" not in response.text


def test_delete_during_a_download_does_not_cut_it_short(server: ServerProcess) -> None:
    data = DATA * 1600  # 16 MiB: far more than socket buffers hold, so the GET is still streaming
    tus = {"Tus-Resumable": "1.0.0"}
    url = httpx.post(server.url, headers={**tus, "Upload-Length": str(len(data))}).headers["Location"]
    octets = {**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    assert httpx.patch(url, content=data, headers=octets, timeout=30).status_code == 204
    with httpx.stream("GET", url, timeout=30) as response:
        chunks = response.iter_raw(65536)
        received = next(chunks)
        assert httpx.delete(url, headers=tus).status_code == 204
        assert not (server.data_dir / "uploads" / url.rsplit("/", 1)[1]).exists()
        received += b"".join(chunks)
    assert received == data
    assert httpx.get(url).status_code == 404


@pytest.mark.parametrize(
    ("filetype", "expected"),
    [
        ("image/png", "image/png"),
        ("video/mp4", "video/mp4"),
        ("text/html", "application/octet-stream"),
        ("image/svg+xml", "application/octet-stream"),
        ("application/javascript", "application/octet-stream"),
    ],
)
async def test_content_type_only_from_the_allow_list(
    client: httpx.AsyncClient, filetype: str, expected: str
) -> None:
    path = await finished(client, f"filetype {b64(filetype)},filename {b64('x')}")
    response = await client.get(path)
    assert response.headers["Content-Type"].split(";")[0] == expected
    inline = expected != "application/octet-stream"
    assert response.headers["Content-Disposition"].startswith("inline" if inline else "attachment")


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("report.pdf", 'attachment; filename="report.pdf"'),
        ('evil"\r\nSet-Cookie: a=b.txt',
         "attachment; filename=\"evil___Set-Cookie: a=b.txt\"; "
         "filename*=UTF-8''evil%22%0D%0ASet-Cookie%3A%20a%3Db.txt"),
        ("résumé.txt", "attachment; filename=\"r_sum_.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9.txt"),
        ("../../etc/passwd", "attachment; filename=\".._.._etc_passwd\""),
    ],
)  # fmt: skip
async def test_filename_is_sanitised_m7(client: httpx.AsyncClient, filename: str, expected: str) -> None:
    path = await finished(client, f"filename {b64(filename)}")
    response = await client.get(path)
    assert response.headers["Content-Disposition"] == expected
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-99", 0, 100),
        ("bytes=10000-", 10000, 10240),
        ("bytes=-40", 10200, 10240),
        ("bytes=5-999999", 5, 10240),
    ],
)
async def test_single_range_is_206(client: httpx.AsyncClient, header: str, start: int, end: int) -> None:
    path = await finished(client)
    response = await client.get(path, headers={"Range": header})
    assert response.status_code == 206
    assert response.content == DATA[start:end]
    assert response.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(DATA)}"


@pytest.mark.parametrize("header", ["bytes=10240-", "bytes=20000-30000", "bytes=-0"])
async def test_unsatisfiable_range_is_416(client: httpx.AsyncClient, header: str) -> None:
    path = await finished(client)
    response = await client.get(path, headers={"Range": header})
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{len(DATA)}"


async def test_multiple_or_odd_ranges_get_the_whole_file(client: httpx.AsyncClient) -> None:
    path = await finished(client)
    for header in ("bytes=0-1,5-6", "items=0-1", "bytes=abc"):
        response = await client.get(path, headers={"Range": header})
        assert (response.status_code, len(response.content)) == (200, len(DATA))


async def test_unfinished_or_unknown_upload_is_a_clear_4xx(client: httpx.AsyncClient) -> None:
    path = await create(client, 10)
    assert (await patch(client, path, 0, b"12345")).status_code == 204
    unfinished = await client.get(path)
    assert unfinished.status_code == 409
    assert "not finished" in unfinished.text
    assert (await client.get("/files/" + "0" * 32)).status_code == 404


async def test_downloads_can_be_switched_off(tmp_path: Path, database_url: str) -> None:
    settings = Settings(data_dir=tmp_path / "d", database_url=database_url, disable_download=True)
    async with app_client(settings) as client:
        path = await finished(client)
        response = await client.get(path)
    assert response.status_code == 405
    assert "GET" not in response.headers["Allow"]
