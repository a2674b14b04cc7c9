"""checksum extension (PROTOCOL.md §7): digests verified while the body streams; 460 stores nothing."""

from __future__ import annotations

import base64
import hashlib

import httpx
import pytest

from tests.helpers import BASE, create, offset_of, patch, stored_bytes
from tusserver import Settings

pytestmark = pytest.mark.anyio
HELLO = b"Hello, tus!\n"


def digest(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


async def test_options_lists_algorithms_k1_k2(client: httpx.AsyncClient) -> None:
    response = await client.options(BASE)
    assert response.headers["Tus-Checksum-Algorithm"] == "md5,sha1,sha256,sha512"
    assert "checksum" in response.headers["Tus-Extension"].split(",")


def test_spec_vectors_k3() -> None:
    assert digest("sha1", b"hello world") == "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0="
    assert digest("sha1", HELLO) == "sha1 E7X121m3do5RTtnrOi5XTG9Uq0A="


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256", "sha512"])
async def test_matching_checksum_appends_k7(
    client: httpx.AsyncClient, settings: Settings, algorithm: str
) -> None:
    path = await create(client, 12)
    response = await patch(client, path, 0, HELLO, Upload_Checksum=digest(algorithm, HELLO))
    assert (response.status_code, response.headers["Upload-Offset"]) == (204, "12")
    assert stored_bytes(settings.data_dir, path) == HELLO


async def test_mismatch_is_460_and_offset_stays_k5_k8(client: httpx.AsyncClient, settings: Settings) -> None:
    path = await create(client, 12)
    wrong = await patch(client, path, 0, HELLO, Upload_Checksum=digest("sha1", b"something else"))
    assert wrong.status_code == 460
    assert "mismatch" in wrong.text
    assert await offset_of(client, path) == 0
    retry = await patch(client, path, 0, HELLO, Upload_Checksum=digest("sha1", HELLO))
    assert (retry.status_code, retry.headers["Upload-Offset"]) == (204, "12")
    assert stored_bytes(settings.data_dir, path) == HELLO


@pytest.mark.parametrize("value", ["sha1 AAAAAAAAAAAAAAAAAAAAAAAAAAAA", "sha1 foobar", "sha256 " + "A" * 44])
async def test_wrong_length_digest_is_a_mismatch_k5_k9(client: httpx.AsyncClient, value: str) -> None:
    path = await create(client, 12)
    assert (await patch(client, path, 0, HELLO, Upload_Checksum=value)).status_code == 460
    assert await offset_of(client, path) == 0


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("unknownalgo AAAAAAAAAA", "unsupported"),
        ("crc32 AAAAAA==", "unsupported"),
        ("foo bar", "unsupported"),
        ("sha1", "base64"),
        ("md5 .fsdaq-", "base64"),
        ("sha1 not base64!", "base64"),
    ],
)
async def test_bad_checksum_header_is_400_k4_k9(client: httpx.AsyncClient, value: str, needle: str) -> None:
    path = await create(client, 12)
    response = await patch(client, path, 0, HELLO, Upload_Checksum=value)
    assert response.status_code == 400
    assert needle in response.text
    assert await offset_of(client, path) == 0


async def test_other_checks_win_over_checksum_k10(client: httpx.AsyncClient) -> None:
    path = await create(client, 5)
    assert (await patch(client, path, 0, HELLO, Upload_Checksum="unknownalgo AAAA")).status_code == 413
    assert (await patch(client, path, 3, b"ab", Upload_Checksum="unknownalgo AAAA")).status_code == 409


async def test_post_with_body_verifies_checksum_cu7(client: httpx.AsyncClient) -> None:
    headers = {"Upload-Length": "12", "Content-Type": "application/offset+octet-stream"}
    good = await client.post(
        BASE, headers={**headers, "Upload-Checksum": digest("sha1", HELLO)}, content=HELLO
    )
    assert (good.status_code, good.headers["Upload-Offset"]) == (201, "12")
    bad = await client.post(BASE, headers={**headers, "Upload-Checksum": digest("sha1", b"x")}, content=HELLO)
    assert bad.status_code == 460
