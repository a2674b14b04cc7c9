"""The last resort (issue 8, points 7 and 13): an error in the SQL is a bug, answered 500 and not
disguised as an outage (503); that 500 still carries `Tus-Resumable` and the CORS headers, is logged
once with its traceback, and leaves the keep-alive connection usable. HTTP/1.1 without `Host` is 400.
SIGTERM with a download in flight exits 0 without a traceback."""

from __future__ import annotations

import asyncio
import signal
import socket
import sqlite3
import time
from pathlib import Path
from typing import BinaryIO

import asyncpg
import httpx
import pytest

from tests.conftest import new_postgres_database
from tests.servers import ServerProcess

TUS = {"Tus-Resumable": "1.0.0"}


def _break_schema(database_url: str) -> None:
    """What a bug or a mismatched schema looks like to the server: a column its SQL names is gone."""
    statement = "ALTER TABLE upload RENAME COLUMN metadata TO metadata_elsewhere"
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as connection:
            connection.execute(statement)
        return

    async def alter() -> None:
        connection = await asyncpg.connect(database_url)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(alter())


def _read_response(stream: BinaryIO, head: bool = False) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One response off a keep-alive connection (`sock.makefile("rb")`), leaving the next in place."""
    status = stream.readline().rstrip(b"\r\n")
    assert status, "connection closed"
    headers = {}
    while line := stream.readline().rstrip(b"\r\n"):
        name, value = line.split(b":", 1)
        headers[name.strip().lower()] = value.strip()
    length = 0 if head else int(headers.get(b"content-length", b"0"))
    return status, headers, stream.read(length)


@pytest.fixture
def own_database(database_url: str) -> str:
    """A database this test may break (the PostgreSQL one of the session is shared)."""
    return new_postgres_database() if database_url.startswith("postgresql") else database_url


def test_a_bug_answers_500_with_tus_and_cors_headers_and_the_connection_lives_on(
    tmp_path: Path, own_database: str
) -> None:
    server = ServerProcess(tmp_path / "data", own_database)
    server.start()
    try:
        _answer_500_and_keep_the_connection(server, own_database)
    finally:
        server.stop()


def _answer_500_and_keep_the_connection(server: ServerProcess, database_url: str) -> None:
    created = httpx.post(server.url, headers={**TUS, "Upload-Length": "5"})
    upload_id = created.headers["Location"].rsplit("/", 1)[1]
    _break_schema(database_url)
    request = (
        f"HEAD /files/{upload_id} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
        "Origin: https://app.example\r\n\r\n"
        f"DELETE /files/{upload_id} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
        "Origin: https://app.example\r\n\r\n"
        "OPTIONS /files/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request.encode())  # three requests on one keep-alive connection
        stream = sock.makefile("rb")
        status, headers, _ = _read_response(stream, head=True)
        assert status.startswith(b"HTTP/1.1 500"), status
        assert headers[b"tus-resumable"] == b"1.0.0"
        assert headers[b"access-control-allow-origin"] in {b"*", b"https://app.example"}
        status, headers, body = _read_response(stream)
        assert status.startswith(b"HTTP/1.1 500"), status  # not 503: a retry would not help
        assert body == b"internal server error\n"
        assert headers[b"tus-resumable"] == b"1.0.0"
        status, headers, _ = _read_response(stream)
        assert status.startswith(b"HTTP/1.1 2"), status  # the connection is still good
        assert b"tus-version" in headers
    log = server.log()
    assert log.count("internal_error method=HEAD") == 1
    assert log.count("internal_error method=DELETE") == 1
    assert log.count(" ERROR ") == 2  # logged once per failed request (with its traceback), by us only
    assert "Exception in ASGI application" not in log
    assert "database_unavailable" not in log


def test_http11_request_without_host_is_400(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /files/ HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 5\r\n\r\n")
        stream = sock.makefile("rb")
        status, _, body = _read_response(stream)
    assert status.startswith(b"HTTP/1.1 400"), status
    assert b"Host" in body
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"OPTIONS /files/ HTTP/1.0\r\n\r\n")  # HTTP/1.0 has no Host requirement
        stream = sock.makefile("rb")
        status, _, _ = _read_response(stream)
    assert status.split(b" ")[1].startswith(b"2"), status


def test_sigterm_with_a_download_in_flight_exits_0_quietly(tmp_path: Path, database_url: str) -> None:
    server = ServerProcess(tmp_path / "data", database_url, extra_args=["--shutdown-timeout", "2"])
    server.start()
    try:
        size = 64 * 1024 * 1024
        created = httpx.post(server.url, headers={**TUS, "Upload-Length": str(size)})
        url = created.headers["Location"]
        response = httpx.patch(
            url,
            content=b"x" * size,
            headers={**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
            timeout=60,
        )
        assert response.status_code == 204
        upload_id = url.rsplit("/", 1)[1]
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(f"GET /files/{upload_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # then stall: the download is stuck
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            code = server.process.wait(timeout=30)
            assert time.monotonic() - started < 15
    finally:
        server.stop()
    assert code == 0
    assert "Traceback" not in server.log()
