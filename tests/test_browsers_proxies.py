"""Browsers (CORS), reverse proxies (forwarded headers, mount paths), method override, header limits."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from tests.conftest import app_client
from tests.helpers import BASE, create, patch
from tusserver import Settings, create_app

pytestmark = pytest.mark.anyio
ORIGIN = "https://app.example.com"


async def test_preflight_is_answered_without_tus_resumable_c_o4(client: httpx.AsyncClient) -> None:
    headers = {
        "Tus-Resumable": "",
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "PATCH",
        "Access-Control-Request-Headers": "upload-offset,tus-resumable,content-type",
    }
    response = await client.options(BASE + "0" * 32, headers=headers)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    allowed = response.headers["Access-Control-Allow-Methods"]
    assert {"POST", "HEAD", "PATCH", "DELETE", "GET", "OPTIONS"} <= {m.strip() for m in allowed.split(",")}
    allow_headers = response.headers["Access-Control-Allow-Headers"].lower()
    needed = ["upload-offset", "upload-length", "upload-metadata", "upload-concat", "upload-checksum",
              "tus-resumable", "x-http-method-override", "content-type", "upload-defer-length"]  # fmt: skip
    for name in needed:
        assert name in allow_headers
    assert "Access-Control-Max-Age" in response.headers
    assert "Access-Control-Allow-Credentials" not in response.headers


async def test_responses_expose_every_tus_header(client: httpx.AsyncClient) -> None:
    response = await client.post(BASE, headers={"Upload-Length": "5", "Origin": ORIGIN})
    assert response.status_code == 201
    exposed = {name.strip().lower() for name in response.headers["Access-Control-Expose-Headers"].split(",")}
    needed = {"location", "upload-offset", "upload-length", "upload-metadata", "upload-expires",
              "upload-concat", "upload-defer-length", "tus-version", "tus-resumable", "tus-max-size",
              "tus-extension", "tus-checksum-algorithm"}  # fmt: skip
    assert needed <= exposed
    failed = await client.post(BASE, headers={"Origin": ORIGIN, "Tus-Resumable": "0.1"})
    assert failed.status_code == 412
    assert failed.headers["Access-Control-Allow-Origin"] == "*"  # the browser can read the error


async def test_allowed_origins_and_credentials(tmp_path: Path, database_url: str) -> None:
    settings = Settings(
        data_dir=tmp_path / "d", database_url=database_url, cors_origins=ORIGIN, cors_allow_credentials=True
    )
    async with app_client(settings) as client:
        allowed = await client.post(BASE, headers={"Upload-Length": "1", "Origin": ORIGIN})
        other = await client.post(BASE, headers={"Upload-Length": "1", "Origin": "https://evil.example"})
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert allowed.headers["Access-Control-Allow-Credentials"] == "true"
    assert allowed.headers["Vary"] == "Origin"
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_cors_can_be_turned_off(tmp_path: Path, database_url: str) -> None:
    settings = Settings(data_dir=tmp_path / "d", database_url=database_url, cors_origins="none")
    async with app_client(settings) as client:
        response = await client.post(BASE, headers={"Upload-Length": "1", "Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize(
    ("headers", "location_prefix"),
    [
        ({"X-Forwarded-Host": "uploads.example.com", "X-Forwarded-Proto": "https"}, "https://uploads.example.com/files/"),
        ({"Forwarded": 'for=1.2.3.4;host="cdn.example.com:8443";proto=https'}, "https://cdn.example.com:8443/files/"),
        ({"X-Forwarded-Host": "a.example.com:443", "X-Forwarded-Proto": "https"}, "https://a.example.com/files/"),
        ({"X-Forwarded-Host": "b.example.com", "X-Forwarded-Proto": "javascript"}, "http://b.example.com/files/"),
        ({"X-Forwarded-Host": "evil.com/x?", "X-Forwarded-Proto": "https"}, "https://testserver/files/"),
    ],
)  # fmt: skip
async def test_forwarded_headers_when_behind_a_proxy_cr15(
    tmp_path: Path, database_url: str, headers: dict[str, str], location_prefix: str
) -> None:
    settings = Settings(data_dir=tmp_path / "d", database_url=database_url, behind_proxy=True)
    async with app_client(settings) as client:
        response = await client.post(BASE, headers={"Upload-Length": "1", **headers})
    assert response.headers["Location"].startswith(location_prefix)


async def test_forwarded_headers_are_ignored_by_default(client: httpx.AsyncClient) -> None:
    response = await client.post(BASE, headers={"Upload-Length": "1", "X-Forwarded-Host": "evil.example.com"})
    assert response.headers["Location"].startswith("http://testserver/files/")


async def test_mount_path_is_part_of_upload_urls(tmp_path: Path, database_url: str) -> None:
    """Mounted at /uploads (or served with uvicorn --root-path /uploads) behind a TLS proxy."""
    settings = Settings(data_dir=tmp_path / "d", database_url=database_url, behind_proxy=True)
    tus = create_app(settings)
    outer = Starlette(routes=[Mount("/uploads", app=tus)])
    async with tus.router.lifespan_context(tus):
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://internal:8000") as client:
            headers = {
                "Tus-Resumable": "1.0.0",
                "X-Forwarded-Host": "example.com",
                "X-Forwarded-Proto": "https",
            }
            created = await client.post("/uploads/files/", headers={**headers, "Upload-Length": "2"})
            location = created.headers["Location"]
            assert location.startswith("https://example.com/uploads/files/")
            path = "/uploads/files/" + location.rsplit("/", 1)[1]
            assert (await client.head(path, headers=headers)).status_code == 200


@pytest.mark.parametrize("method", ["HEAD", "PATCH", "DELETE", "OPTIONS", "GET"])
async def test_method_override_works_for_every_method_c_h8(client: httpx.AsyncClient, method: str) -> None:
    path = await create(client, 3)
    headers = {
        "X-HTTP-Method-Override": method,
        "Content-Type": "application/offset+octet-stream",
        "Upload-Offset": "0",
    }
    if method == "GET":
        assert (await patch(client, path, 0, b"abc")).status_code == 204
    response = await client.post(path, headers=headers, content=b"abc" if method == "PATCH" else b"")
    expected = {"HEAD": 200, "PATCH": 204, "DELETE": 204, "OPTIONS": 200, "GET": 200}[method]
    assert response.status_code == expected
    if method == "OPTIONS":
        assert response.headers["Tus-Version"] == "1.0.0"
    if method == "GET":
        assert response.content == b"abc"


async def test_metadata_larger_than_the_limit_is_413_m8(tmp_path: Path, database_url: str) -> None:
    settings = Settings(data_dir=tmp_path / "d", database_url=database_url, max_metadata_size=64)
    async with app_client(settings) as client:
        small = await client.post(BASE, headers={"Upload-Length": "1", "Upload-Metadata": "k " + "QUFB" * 10})
        large = await client.post(BASE, headers={"Upload-Length": "1", "Upload-Metadata": "k " + "QUFB" * 20})
    assert small.status_code == 201
    assert large.status_code == 413
    assert "Upload-Metadata" in large.text


async def test_default_metadata_limit_takes_conformance_sized_headers(client: httpx.AsyncClient) -> None:
    response = await client.post(
        BASE, headers={"Upload-Length": "1", "Upload-Metadata": "k " + "QUFB" * 2000}
    )
    assert response.status_code == 201
