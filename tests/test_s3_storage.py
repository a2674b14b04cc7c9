"""S3 storage end to end: real `tusserver serve` processes storing in a real S3-compatible server (moto,
its own process), driven by tuspy and httpx. Checked through the bucket itself: bytes (sha256), what
objects and multipart uploads are left, and that HEAD needs no S3 request.

The protocol suites run against S3 too (`S3_PROTOCOL_MODULES` in conftest.py), and so does the
storage contract (test_storage_contract.py).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import MiB, random_file, sha256_file
from tests.hook_receiver import HookReceiver
from tests.s3server import MotoServer, keys, multipart_uploads, object_bytes
from tests.servers import ServerProcess, free_port
from tests.test_end_to_end import server_offset, uploader, url_of
from tests.test_load_balancer import in_background
from tests.test_startup_errors import _one_clear_line, _serve
from tests.test_tus_js_client import node, upload_with_tus_js_client
from tusserver.storage.s3_client import MAX_OBJECT_SIZE, MAX_PARTS, S3Location, parse_location, part_size_for

__all__ = ["node"]  # the fixture, shared with the tus-js-client suite

TUS = {"Tus-Resumable": "1.0.0"}


def s3_args(s3_server: MotoServer, bucket: str, endpoint: str | None = None) -> list[str]:
    return [
        "--storage", f"s3://{bucket}/tus", "--s3-endpoint-url", endpoint or s3_server.url,
        "--s3-region", "us-east-1", "--s3-part-size", "5M",
    ]  # fmt: skip


@pytest.fixture
def s3_process(
    tmp_path: Path, database_url: str, s3_server: MotoServer, s3_bucket: str
) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path / "data", database_url, s3_args(s3_server, s3_bucket))
    process.start()
    yield process
    process.stop()


def cleanup_once(database_url: str, data_dir: Path, s3_server: MotoServer, bucket: str) -> None:
    """`tusserver cleanup` with no orphan grace: expired uploads, orphans, interrupted finishes."""
    command = [
        sys.executable, "-m", "tusserver", "cleanup", "--database-url", database_url,
        "--data-dir", str(data_dir), *s3_args(s3_server, bucket), "--orphan-grace", "0",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr


def sha256_of_download(url: str) -> str:
    digest = hashlib.sha256()
    with httpx.stream("GET", url, headers=TUS, timeout=60) as response:
        assert response.status_code == 200
        for block in response.iter_bytes():
            digest.update(block)
    return digest.hexdigest()


def upload_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


def only_finished_objects(client: Any, bucket: str, *upload_urls: str) -> None:
    """Nothing but the finished objects is left: no tail, no multipart upload."""
    assert sorted(keys(client, bucket)) == sorted(f"tus/{upload_id(url)}" for url in upload_urls)
    assert multipart_uploads(client, bucket) == []


def test_tuspy_upload_in_parts_with_a_tail_is_byte_identical(
    s3_process: ServerProcess, s3_server: MotoServer, s3_bucket: str, tmp_path: Path
) -> None:
    """12 MiB + 5 bytes in 3 MiB PATCHes: two 5 MiB parts, a tail carried across PATCHes, the tail
    sent as the last part; GET streams it back, with ranges passed through."""
    source = random_file(tmp_path / "video.bin", 12 * MiB + 5)
    with source.open("rb") as stream:
        upload = uploader(s3_process.url, stream, chunk_size=3 * MiB, metadata={"filename": "v.bin"})
        upload.upload()
    url = url_of(upload)
    client = s3_server.client()
    assert hashlib.sha256(object_bytes(client, s3_bucket, f"tus/{upload_id(url)}")).hexdigest() == (
        sha256_file(source)
    )
    assert sha256_of_download(url) == sha256_file(source)
    ranged = httpx.get(url, headers={**TUS, "Range": "bytes=10485755-10485764"})
    assert ranged.status_code == 206
    assert ranged.content == source.read_bytes()[10485755:10485765]
    only_finished_objects(client, s3_bucket, url)


@pytest.mark.parametrize("parallel", [1, 4])
def test_tus_js_client_uploads_and_parallel_concatenation(
    s3_process: ServerProcess, s3_server: MotoServer, s3_bucket: str, node: str, tmp_path: Path, parallel: int
) -> None:
    """tus-js-client, once in 5 MiB chunks and once with `parallelUploads: 4` (four partials of 6 MiB
    + 1 byte, assembled by UploadPartCopy; the partials are deleted afterwards)."""
    source = random_file(tmp_path / "video.bin", 24 * MiB + 4)
    url = upload_with_tus_js_client(node, s3_process.url, source, chunk_size=5 * MiB, parallel=parallel)
    assert sha256_of_download(url) == sha256_file(source)
    only_finished_objects(s3_server.client(), s3_bucket, url)


def test_deferred_length_and_zero_length_uploads(
    s3_process: ServerProcess, s3_server: MotoServer, s3_bucket: str
) -> None:
    empty = httpx.post(s3_process.url, headers={**TUS, "Upload-Length": "0"})
    assert empty.status_code == 201
    assert httpx.get(empty.headers["Location"], headers=TUS).content == b""
    deferred = httpx.post(s3_process.url, headers={**TUS, "Upload-Defer-Length": "1"})
    url = deferred.headers["Location"]
    body = b"x" * (6 * MiB)
    headers = {**TUS, "Content-Type": "application/offset+octet-stream"}
    first = httpx.patch(url, content=body, headers={**headers, "Upload-Offset": "0"}, timeout=60)
    assert first.status_code == 204
    last = httpx.patch(
        url,
        content=b"end",
        headers={**headers, "Upload-Offset": str(len(body)), "Upload-Length": str(len(body) + 3)},
    )
    assert last.status_code == 204
    assert httpx.get(url, headers=TUS, timeout=60).content == body + b"end"
    only_finished_objects(s3_server.client(), s3_bucket, url, empty.headers["Location"])


def test_kill_9_mid_upload_resumes_at_the_committed_offset(
    s3_process: ServerProcess, s3_server: MotoServer, s3_bucket: str, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "backup.bin", 32 * MiB)
    stream = source.open("rb")
    upload = uploader(s3_process.url, stream, chunk_size=32 * MiB)
    upload.set_url(upload.create_url())
    url = url_of(upload)
    client = s3_server.client()
    thread, failure = in_background(upload.upload)
    [(key, multipart)] = [
        (item["Key"], item["UploadId"]) for item in client.list_multipart_uploads(Bucket=s3_bucket)["Uploads"]
    ]
    deadline = time.monotonic() + 60
    # Watch the parts in the bucket, not HEAD: a HEAD would ask the streaming PATCH to stop.
    while len(client.list_parts(Bucket=s3_bucket, Key=key, UploadId=multipart).get("Parts", [])) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    s3_process.kill()
    thread.join(timeout=60)
    stream.close()
    assert failure, "the upload should have been interrupted by the kill"

    s3_process.start()
    acknowledged = server_offset(s3_process, url)
    assert acknowledged < 32 * MiB
    with source.open("rb") as again:
        resumed = uploader(s3_process.url, again, url=url, chunk_size=7 * MiB)
        assert resumed.offset == acknowledged
        resumed.upload()
    assert sha256_of_download(url) == sha256_file(source)
    only_finished_objects(client, s3_bucket, url)


def test_termination_expiry_and_orphans_leave_nothing_behind(
    tmp_path: Path, database_url: str, s3_server: MotoServer, s3_bucket: str
) -> None:
    process = ServerProcess(
        tmp_path / "data",
        database_url,
        [*s3_args(s3_server, s3_bucket), "--expire-after", "2s", "--cleanup-interval", "1s"],
    )
    process.start()
    client = s3_server.client()
    try:
        headers = {**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
        made = [httpx.post(process.url, headers={**TUS, "Upload-Length": str(8 * MiB)}) for _ in range(2)]
        urls = [answer.headers["Location"] for answer in made]
        for url in urls:
            assert httpx.patch(url, content=b"p" * (6 * MiB), headers=headers, timeout=60).status_code == 204
        assert len(multipart_uploads(client, s3_bucket)) == 2
        assert httpx.delete(urls[0], headers=TUS).status_code == 204  # terminated
        deadline = time.monotonic() + 30  # the other one expires
        while multipart_uploads(client, s3_bucket) or keys(client, s3_bucket):
            assert time.monotonic() < deadline, (
                keys(client, s3_bucket),
                multipart_uploads(client, s3_bucket),
            )
            time.sleep(0.2)
        assert httpx.head(urls[1], headers=TUS).status_code in (404, 410)
    finally:
        process.stop()
    # Crash leftovers no row knows: a multipart upload and a tail, under the prefix.
    orphan = "tus/" + "0" * 32
    client.create_multipart_upload(Bucket=s3_bucket, Key=orphan)
    client.put_object(Bucket=s3_bucket, Key=orphan + ".tail-0123456789abcdef", Body=b"left")
    client.put_object(Bucket=s3_bucket, Key="elsewhere/not-ours", Body=b"kept")
    cleanup_once(database_url, tmp_path / "data", s3_server, s3_bucket)
    assert multipart_uploads(client, s3_bucket) == []
    assert keys(client, s3_bucket) == ["elsewhere/not-ours"]


def test_hooks_report_s3store_and_post_finish_comes_once_the_object_exists(
    tmp_path: Path, database_url: str, s3_server: MotoServer, s3_bucket: str
) -> None:
    """tusd's Storage field; a post-finish receiver can read the object at once (the event is
    committed with the record of CompleteMultipartUpload, not before it)."""
    client = s3_server.client()
    sizes: list[int] = []

    def policy(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if request["Type"] == "post-finish":
            storage = request["Event"]["Upload"]["Storage"]
            sizes.append(len(object_bytes(client, storage["Bucket"], storage["Key"])))
        return 200, {}

    receiver = HookReceiver(policy)
    args = [*s3_args(s3_server, s3_bucket), "--hooks-http", receiver.url]
    process = ServerProcess(tmp_path / "data", database_url, args)
    process.start()
    try:
        url = httpx.post(process.url, headers={**TUS, "Upload-Length": str(6 * MiB)}).headers["Location"]
        headers = {**TUS, "Content-Type": "application/offset+octet-stream", "Upload-Offset": "0"}
        assert httpx.patch(url, content=b"h" * (6 * MiB), headers=headers, timeout=60).status_code == 204
        deadline = time.monotonic() + 20
        while not receiver.of_type("post-finish"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        process.stop()
        receiver.close()
    [created] = receiver.of_type("post-create")
    [finished] = receiver.of_type("post-finish")
    expected = {"Type": "s3store", "Bucket": s3_bucket, "Key": f"tus/{upload_id(url)}"}
    assert created.upload["Storage"] == finished.upload["Storage"] == expected
    assert sizes == [6 * MiB]


def test_s3_start_up_problems_are_one_line(tmp_path: Path, s3_server: MotoServer) -> None:
    common = ["--port", str(free_port()), "--data-dir", str(tmp_path / "data")]
    missing = [*common, "--storage", "s3://no-such-bucket/tus", "--s3-endpoint-url", s3_server.url]
    code, output = _serve(*missing)
    assert code == 1
    assert "S3 bucket no-such-bucket is not usable: NoSuchBucket" in _one_clear_line(output)
    code, output = _serve(*common, "--storage", "s3")
    assert code == 2
    assert "needs a bucket" in _one_clear_line(output)
    code, output = _serve(*common, "--storage", "s3://bucket", "--s3-part-size", "4M")
    assert code == 2
    assert "at least 5M" in _one_clear_line(output)
    code, output = _serve(*common, "--storage", "gcs://bucket")
    assert code == 2
    assert "not a storage" in _one_clear_line(output)


@pytest.mark.parametrize(
    ("length", "max_size", "expected"),
    [
        (0, None, 8 * MiB),
        (10 * MiB, None, 8 * MiB),
        (100 * 1024**3, None, 11 * MiB),  # 100 GiB: 10.24 MiB parts at least, whole MiB
        (None, None, 525 * MiB),  # deferred: 5 TiB must fit
        (None, 50 * 1024**3, 8 * MiB),  # deferred under --max-size 50G
        (MAX_OBJECT_SIZE, None, 525 * MiB),
    ],
)
def test_part_sizes_fit_every_length_in_10000_parts(
    length: int | None, max_size: int | None, expected: int
) -> None:
    size = part_size_for(length, 8 * MiB, max_size)
    assert size == expected
    assert size * MAX_PARTS >= (length if length is not None else (max_size or MAX_OBJECT_SIZE))


def test_storage_locations() -> None:
    assert parse_location("s3://bucket/some/prefix/", None, "") == S3Location("bucket", "some/prefix/")
    assert parse_location("s3://bucket", None, "") == S3Location("bucket", "")
    assert parse_location("s3", "bucket", "/tus/") == S3Location("bucket", "tus/")
    with pytest.raises(ValueError, match="needs a bucket"):
        parse_location("s3", None, "tus")
    location = S3Location("bucket", "tus/")
    upload = "0123456789abcdef0123456789abcdef"
    assert location.upload_id_of(location.key(upload)) == upload
    assert location.upload_id_of(location.tail_key(upload)) == upload
    assert location.upload_id_of("tus/" + upload + ".info") is None
    assert location.upload_id_of("other/" + upload) is None
    with pytest.raises(ValueError, match="not an upload id"):
        location.key("../etc")
