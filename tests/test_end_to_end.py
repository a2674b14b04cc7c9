"""End to end: a real `tusserver serve` process on a loopback port, driven by tuspy.

Covers the issue's scenarios: a 50 MiB upload in 5 MiB chunks, a connection cut mid-PATCH then
resumed by a new client, the server killed mid-upload and restarted on the same data, and the
finish hooks (callable and webhook) firing once in a real process.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pytest
from tusclient import client as tus
from tusclient.exceptions import TusCommunicationError, TusUploadFailed
from tusclient.uploader.uploader import Uploader

from tests.helpers import MiB, random_file, raw_patch_head, sha256_file, stored_file
from tests.netfaults import CuttingProxy
from tests.servers import ServerProcess
from tests.test_hooks import WebhookReceiver


def uploader(endpoint: str, stream: BinaryIO, **options: Any) -> Uploader:
    """A tuspy uploader on an open stream (with a path, tuspy leaves its file handles open)."""
    return tus.TusClient(endpoint).uploader(file_stream=stream, **options)


def url_of(upload: Uploader) -> str:
    assert upload.url is not None
    return upload.url


def server_offset(server: ServerProcess, upload_url: str) -> int:
    """HEAD straight to `server`. After a kill -9 it may wait out the dead process's lease (up to
    --lock-ttl) before it answers, hence the long timeout."""
    path = httpx.URL(upload_url).path
    url = server.url.removesuffix("/files/") + path
    response = httpx.head(url, headers={"Tus-Resumable": "1.0.0"}, timeout=30)
    assert response.status_code == 200
    return int(response.headers["Upload-Offset"])


def test_tuspy_uploads_50_mib_in_5_mib_chunks(server: ServerProcess, tmp_path: Path) -> None:
    source = random_file(tmp_path / "video.bin", 50 * MiB)
    with source.open("rb") as stream:
        upload = uploader(server.url, stream, chunk_size=5 * MiB, metadata={"filename": "video.bin"})
        upload.upload()
    assert server_offset(server, url_of(upload)) == 50 * MiB
    assert sha256_file(stored_file(server.data_dir, url_of(upload))) == sha256_file(source)


def test_upload_resumes_after_the_connection_is_cut_mid_patch(server: ServerProcess, tmp_path: Path) -> None:
    source = random_file(tmp_path / "data.bin", 24 * MiB)
    proxy = CuttingProxy(server.port, cut_after=8 * MiB)  # inside the second 5 MiB PATCH
    try:
        with source.open("rb") as stream:
            upload = uploader(proxy.url, stream, chunk_size=5 * MiB)
            with pytest.raises((TusCommunicationError, TusUploadFailed)):
                upload.upload()
        assert proxy.cut.is_set()
    finally:
        proxy.close()
    url = url_of(upload)
    # Bytes received before the cut were kept (C-P8): more than the first, acknowledged chunk.
    deadline = time.monotonic() + 10
    while (kept := server_offset(server, url)) <= 5 * MiB and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 5 * MiB < kept < 8 * MiB
    direct_url = server.url + url.rsplit("/", 1)[1]
    with source.open("rb") as stream:
        resumed = uploader(server.url, stream, url=direct_url, chunk_size=5 * MiB)
        assert resumed.offset == kept
        resumed.upload()
    assert sha256_file(stored_file(server.data_dir, url)) == sha256_file(source)


def test_upload_survives_the_server_being_killed_and_restarted(server: ServerProcess, tmp_path: Path) -> None:
    source = random_file(tmp_path / "backup.bin", 48 * MiB)
    stream = source.open("rb")
    upload = uploader(server.url, stream, chunk_size=16 * MiB)
    upload.set_url(upload.create_url())
    failure: list[BaseException] = []

    def upload_in_background() -> None:
        try:
            upload.upload()
        except Exception as exc:
            failure.append(exc)
        finally:
            stream.close()

    thread = threading.Thread(target=upload_in_background)
    thread.start()
    deadline = time.monotonic() + 60
    on_disk = stored_file(server.data_dir, url_of(upload))
    # Watch the file, not HEAD: a HEAD would ask the streaming PATCH to stop (takeover).
    while (not on_disk.exists() or on_disk.stat().st_size < 20 * MiB) and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()  # mid-upload: the second PATCH is streaming
    thread.join(timeout=60)
    assert failure, "the upload should have been interrupted by the kill"

    server.start()
    acknowledged = server_offset(server, url_of(upload))
    assert 16 * MiB <= acknowledged < 48 * MiB
    assert acknowledged <= on_disk.stat().st_size  # the database never claims bytes the disk does not hold
    with source.open("rb") as again:
        resumed = uploader(server.url, again, url=url_of(upload), chunk_size=16 * MiB)
        assert resumed.offset == acknowledged
        resumed.upload()
    assert sha256_file(stored_file(server.data_dir, url_of(upload))) == sha256_file(source)


def test_finish_hooks_fire_once_in_a_real_server(tmp_path: Path, database_url: str) -> None:
    receiver = WebhookReceiver()
    hook_log = tmp_path / "hooks.jsonl"
    process = ServerProcess(
        data_dir=tmp_path / "data",
        database_url=database_url,
        extra_args=["--on-finish", "tests.hook_recorder:record", "--webhook-url", receiver.url],
        env={"TUSSERVER_TEST_HOOK_LOG": str(hook_log)},
    )
    process.start()
    try:
        source = random_file(tmp_path / "photo.jpg", 3 * MiB)
        with source.open("rb") as stream:
            upload = uploader(
                process.url, stream, chunk_size=1 * MiB, metadata={"filename": "photo.jpg", "owner": "ana"}
            )
            upload.upload()
        assert receiver.arrived.wait(timeout=10)
        deadline = time.monotonic() + 10
        while not hook_log.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a duplicate would have arrived by now
    finally:
        process.stop()
        receiver.close()
    upload_id = url_of(upload).rsplit("/", 1)[1]
    lines = [json.loads(line) for line in hook_log.read_text().splitlines()]
    assert len(lines) == 1
    assert len(receiver.bodies) == 1
    for event in (lines[0], receiver.bodies[0]):
        facts: Any = event["upload"]
        assert facts["id"] == upload_id
        assert facts["length"] == 3 * MiB
        assert facts["metadata"] == {"filename": "photo.jpg", "owner": "ana"}
        assert sha256_file(Path(facts["storage"]["path"])) == sha256_file(source)


def test_tuspy_with_checksums_uploads_end_to_end(server: ServerProcess, tmp_path: Path) -> None:
    """tuspy sends `Upload-Checksum: sha1 ...` on every PATCH; the server verifies each (K-7)."""
    source = random_file(tmp_path / "sum.bin", 12 * MiB)
    with source.open("rb") as stream:
        upload = uploader(server.url, stream, chunk_size=4 * MiB, upload_checksum=True)
        upload.upload()
    assert sha256_file(stored_file(server.data_dir, url_of(upload))) == sha256_file(source)
    response = httpx.get(url_of(upload))  # and the download returns the same bytes
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == sha256_file(source)


def test_checksum_mismatch_reaches_the_client_as_460(server: ServerProcess) -> None:
    """uvicorn passes the tus-specific status through unchanged."""
    headers = {"Tus-Resumable": "1.0.0"}
    created = httpx.post(server.url, headers={**headers, "Upload-Length": "3"})
    response = httpx.patch(
        created.headers["Location"],
        content=b"abc",
        headers={
            **headers,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
            "Upload-Checksum": "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=",
        },
    )
    assert response.status_code == 460


def test_root_path_and_forwarded_headers_shape_upload_urls(tmp_path: Path, database_url: str) -> None:
    """A TLS proxy serving https://example.com/uploads/files/ and stripping /uploads (issue 3, point 7)."""
    process = ServerProcess(
        data_dir=tmp_path / "data",
        database_url=database_url,
        extra_args=["--root-path", "/uploads", "--behind-proxy"],
    )
    process.start()
    try:
        headers = {"Tus-Resumable": "1.0.0", "X-Forwarded-Host": "example.com", "X-Forwarded-Proto": "https"}
        created = httpx.post(process.url, headers={**headers, "Upload-Length": "1"})
        assert created.status_code == 201
        location = created.headers["Location"]
        assert location.startswith("https://example.com/uploads/files/")
        upload_id = location.rsplit("/", 1)[1]
        assert httpx.head(process.url + upload_id, headers=headers).status_code == 200
    finally:
        process.stop()


def test_forwarded_headers_count_only_behind_a_proxy(tmp_path: Path, database_url: str) -> None:
    """Without --behind-proxy a client's X-Forwarded-* headers change nothing, even from 127.0.0.1
    (whom uvicorn would trust by default): not the Location, not the client address in the log.
    With it, they give both (X-Forwarded-For from a proxy on 127.0.0.1, uvicorn's default list)."""
    forged = {"X-Forwarded-Host": "example.com", "X-Forwarded-Proto": "https"}
    forged.update({"X-Forwarded-For": "203.0.113.9", "Tus-Resumable": "1.0.0", "Upload-Length": "1"})
    for flags, location, client in (
        ([], "http://127.0.0.1:{port}/files/", "client=127.0.0.1:"),
        (["--behind-proxy"], "https://example.com/files/", "client=203.0.113.9:"),
    ):
        process = ServerProcess(tmp_path / f"data{len(flags)}", database_url, flags)
        process.start()
        try:
            created = httpx.post(process.url, headers=forged)
            assert created.status_code == 201
            assert created.headers["Location"].startswith(location.format(port=process.port))
        finally:
            process.stop()
        request_lines = [line for line in process.log().splitlines() if "method=POST" in line]
        assert request_lines
        assert all(client in line for line in request_lines), request_lines


def send_partial_patch(
    server: ServerProcess, upload_url: str, declared: int, sent: bytes, *headers: str
) -> None:
    """A PATCH that announces `declared` bytes, sends `sent`, then drops the connection."""
    head = raw_patch_head(server.port, httpx.URL(upload_url).path, 0, declared, *headers)
    with socket.create_connection(("127.0.0.1", server.port)) as connection:
        connection.sendall(head + sent)
        time.sleep(0.3)  # let the server take the bytes in before the connection goes


def wait_for_unlocked_offset(server: ServerProcess, upload_url: str) -> int:
    """The offset once the interrupted request has committed what it keeps (PATCH at a wrong offset
    waits for the lock, so its 409 reports the offset after that request ended)."""
    response = httpx.patch(
        upload_url,
        content=b"",
        headers={
            "Tus-Resumable": "1.0.0",
            "Upload-Offset": str(2**40),
            "Content-Type": "application/offset+octet-stream",
        },
    )
    assert response.status_code == 409
    return int(response.headers["Upload-Offset"])


def test_disconnect_keeps_received_bytes_c_p8(server: ServerProcess) -> None:
    created = httpx.post(server.url, headers={"Tus-Resumable": "1.0.0", "Upload-Length": "100"})
    send_partial_patch(server, created.headers["Location"], 100, b"x" * 50)
    assert wait_for_unlocked_offset(server, created.headers["Location"]) == 50


def test_disconnect_with_checksum_keeps_nothing_k6(server: ServerProcess) -> None:
    created = httpx.post(server.url, headers={"Tus-Resumable": "1.0.0", "Upload-Length": "100"})
    checksum = "Upload-Checksum: sha1 " + base64.b64encode(hashlib.sha1(b"x" * 100).digest()).decode()
    send_partial_patch(server, created.headers["Location"], 100, b"x" * 50, checksum)
    assert wait_for_unlocked_offset(server, created.headers["Location"]) == 0


def test_headers_are_judged_before_100_continue_cu8(server: ServerProcess) -> None:
    """A client sending `Expect: 100-continue` learns of a 409/413 before it sends the body."""
    created = httpx.post(server.url, headers={"Tus-Resumable": "1.0.0", "Upload-Length": "10"})
    path = httpx.URL(created.headers["Location"]).path
    for offset, length, expected in ((5, 5, "409"), (0, 11, "413")):
        head = raw_patch_head(server.port, path, offset, length, "Expect: 100-continue")
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
            connection.sendall(head)  # and no body: we wait for permission
            answer = connection.recv(4096).decode("latin-1")
        assert answer.startswith(f"HTTP/1.1 {expected}"), answer
