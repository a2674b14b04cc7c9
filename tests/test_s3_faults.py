"""S3 faults between a real server and a real S3-compatible server: a proxy (tests/s3faults.py) answers
503 SlowDown and 500, holds answers, and cuts connections before and after forwarding. Uploads finish
byte-identical and the bucket keeps nothing but finished objects; while S3 is down, PATCH answers
503 + Retry-After and commits nothing S3 did not confirm."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import MiB, random_file, sha256_file
from tests.s3faults import FaultyS3Proxy
from tests.s3server import MotoServer, keys, multipart_uploads, object_bytes
from tests.servers import ServerProcess
from tests.test_end_to_end import uploader, url_of
from tests.test_s3_storage import TUS, cleanup_once, s3_args, upload_id

OCTETS = "application/offset+octet-stream"


@pytest.fixture
def proxy(s3_server: MotoServer) -> Iterator[FaultyS3Proxy]:
    faulty = FaultyS3Proxy(s3_server.port)
    yield faulty
    faulty.close()


@pytest.fixture
def behind_proxy(
    tmp_path: Path,
    database_url: str,
    s3_server: MotoServer,
    s3_bucket: str,
    proxy: FaultyS3Proxy,
    request: pytest.FixtureRequest,
) -> Iterator[ServerProcess]:
    """A server whose S3 requests go through the proxy; indirect parameter: its AWS_MAX_ATTEMPTS."""
    attempts = str(getattr(request, "param", 5))
    args = s3_args(s3_server, s3_bucket, proxy.url)
    process = ServerProcess(tmp_path / "data", database_url, args, env={"AWS_MAX_ATTEMPTS": attempts})
    process.start()
    yield process
    process.stop()


def test_uploads_finish_intact_through_5xx_slow_answers_and_cut_connections(
    behind_proxy: ServerProcess, proxy: FaultyS3Proxy, s3_server: MotoServer, s3_bucket: str, tmp_path: Path
) -> None:
    sources = [random_file(tmp_path / f"file{n}.bin", size) for n, size in enumerate((11 * MiB + 7, 6 * MiB))]
    urls = []
    for source in sources:
        with source.open("rb") as stream:
            upload = uploader(behind_proxy.url, stream, chunk_size=4 * MiB, retry_delay=1, retries=5)
            upload.upload()
        urls.append(url_of(upload))
    client = s3_server.client()
    for source, url in zip(sources, urls, strict=True):
        stored = object_bytes(client, s3_bucket, f"tus/{upload_id(url)}")
        assert hashlib.sha256(stored).hexdigest() == sha256_file(source)
    assert sorted(keys(client, s3_bucket)) == sorted(f"tus/{upload_id(url)}" for url in urls)
    assert multipart_uploads(client, s3_bucket) == []
    assert {"slowdown", "error", "cut-before", "cut-after", "slow"} <= set(proxy.faults)


@pytest.mark.parametrize("behind_proxy", [2], indirect=True)  # an outage: give up soon
def test_an_s3_outage_is_503_with_retry_after_and_commits_nothing_unconfirmed(
    behind_proxy: ServerProcess, proxy: FaultyS3Proxy, s3_server: MotoServer, s3_bucket: str
) -> None:
    proxy.schedule = ("pass",)
    url = httpx.post(behind_proxy.url, headers={**TUS, "Upload-Length": str(7 * MiB)}).headers["Location"]
    body = b"s" * (7 * MiB)
    headers = {**TUS, "Content-Type": OCTETS}
    first = httpx.patch(url, content=body[:MiB], headers={**headers, "Upload-Offset": "0"}, timeout=60)
    assert first.status_code == 204
    proxy.outage()
    failed = httpx.patch(url, content=body[MiB:], headers={**headers, "Upload-Offset": str(MiB)}, timeout=120)
    assert failed.status_code == 503
    assert "Retry-After" in failed.headers
    assert failed.headers["Content-Type"].startswith("text/plain")
    head = httpx.head(url, headers=TUS)  # HEAD needs no S3 request: it answers during the outage
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == str(MiB)
    proxy.restore()
    resumed = httpx.patch(url, content=body[MiB:], headers={**headers, "Upload-Offset": str(MiB)}, timeout=60)
    assert resumed.status_code == 204
    assert object_bytes(s3_server.client(), s3_bucket, f"tus/{upload_id(url)}") == body
    assert multipart_uploads(s3_server.client(), s3_bucket) == []


@pytest.mark.parametrize("behind_proxy", [2], indirect=True)
@pytest.mark.parametrize("by", ["head", "sweeper"])
def test_a_finish_cut_short_after_the_completing_commit_is_done_later(
    behind_proxy: ServerProcess,
    proxy: FaultyS3Proxy,
    s3_server: MotoServer,
    s3_bucket: str,
    database_url: str,
    tmp_path: Path,
    by: str,
) -> None:
    """CompleteMultipartUpload fails after the completing commit (as if the process died there): the
    upload is complete in the database, and the next HEAD, or the sweeper, completes it in S3."""
    proxy.schedule = ("pass",)
    url = httpx.post(behind_proxy.url, headers={**TUS, "Upload-Length": str(6 * MiB)}).headers["Location"]
    body = b"f" * (6 * MiB)
    proxy.refuse = lambda method, path: method == "POST" and "uploadId=" in path
    headers = {**TUS, "Content-Type": OCTETS, "Upload-Offset": "0"}
    answer = httpx.patch(url, content=body, headers=headers, timeout=120)
    assert answer.status_code == 503
    assert keys(s3_server.client(), s3_bucket, f"tus/{upload_id(url)}") == [
        key for key in keys(s3_server.client(), s3_bucket) if ".tail-" in key
    ]  # no finished object yet
    proxy.refuse = lambda method, path: False
    if by == "sweeper":
        cleanup_once(database_url, tmp_path / "cleanup", s3_server, s3_bucket)
        assert multipart_uploads(s3_server.client(), s3_bucket) == []
    head = httpx.head(url, headers=TUS, timeout=60)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == str(6 * MiB)
    assert object_bytes(s3_server.client(), s3_bucket, f"tus/{upload_id(url)}") == body
    assert keys(s3_server.client(), s3_bucket) == [f"tus/{upload_id(url)}"]
    assert multipart_uploads(s3_server.client(), s3_bucket) == []
