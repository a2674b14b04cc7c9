"""Limits against abuse on a real server process, over raw sockets (`tusserver/http_limits.py` and
uvicorn's `limit_concurrency`):

* a request head (request line + headers) over `--max-header-size` gets 431 at once, even one that
  never ends, and the server keeps serving; a head of exactly the limit is served, and so are
  pipelined heads that together exceed it;
* a head not complete within `--header-timeout` (nothing sent, half a request line, half the headers,
  or the next request on a kept-alive connection) gets 408 and the connection closes, while an idle
  kept-alive connection and a request whose body trickles in slowly are left alone;
* beyond `--max-concurrency` connections a request gets 503, and the server recovers when they close;
* uploads through tuspy still work, with `--workers 2` (the protocol class and its limits reach
  spawned workers).

These limits live below the app and the database, so the tests run on SQLite only.
"""

from __future__ import annotations

import base64
import hashlib
import select
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import tusclient.client as tus

from tests.faults import header
from tests.helpers import MiB, random_file, sha256_file, stored_file
from tests.servers import ServerProcess

TUS = {"Tus-Resumable": "1.0.0"}
DEFAULT_MAX_HEADER_SIZE = 64 * 1024


@contextmanager
def running(tmp_path: Path, *flags: str) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "data", f"sqlite:///{tmp_path / 'tusserver.db'}", flags)
    server.start()
    try:
        yield server
        assert "Traceback" not in server.log(), server.log()[-3000:]
    finally:
        server.stop()


class Connection:
    """A raw client connection that reads responses one by one (pipelined ones arrive together)."""

    def __init__(self, server: ServerProcess) -> None:
        self.socket = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.received = b""

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.socket.close()

    def sendall(self, data: bytes) -> None:
        self.socket.sendall(data)

    def _receive(self, timeout: float) -> bytes:
        self.socket.settimeout(timeout)
        piece = self.socket.recv(65536)
        self.received += piece
        return piece

    def response(self, timeout: float = 10.0) -> tuple[str, bytes]:
        """The next response: its head (status line and headers) and its body (by Content-Length)."""
        while b"\r\n\r\n" not in self.received:
            assert self._receive(timeout), f"closed before a whole response head: {self.received!r}"
        head, _, self.received = self.received.partition(b"\r\n\r\n")
        text = head.decode("latin-1")
        length = int(header(text, "content-length") or 0)
        while len(self.received) < length:
            assert self._receive(timeout), f"closed before the whole body arrived: {text!r}"
        body, self.received = self.received[:length], self.received[length:]
        return text, body

    def assert_closed(self, timeout: float = 5.0) -> None:
        """The server closes the connection (end of stream) within `timeout`, sending nothing more."""
        try:
            while self._receive(timeout):
                pass
        except ConnectionResetError:
            pass
        assert self.received == b"", self.received

    def assert_silent(self, during: float) -> None:
        """Nothing arrives (no answer, no close) for `during` seconds."""
        assert not self.received, self.received
        readable, _, _ = select.select([self.socket], [], [], during)
        assert not readable, self.socket.recv(65536)


def connect(server: ServerProcess) -> Connection:
    return Connection(server)


def creation_head(port: int, size: int, metadata: str = "") -> bytes:
    """A POST creating a 3-byte upload whose head is exactly `size` bytes."""
    lines = ["POST /files/ HTTP/1.1", f"Host: 127.0.0.1:{port}", "Tus-Resumable: 1.0.0", "Upload-Length: 3"]
    if metadata:
        lines.append(f"Upload-Metadata: {metadata}")
    return padded_head(lines, size)


def padded_head(lines: list[str], size: int) -> bytes:
    """`lines` as a request head (up to and including the blank line) of exactly `size` bytes, padded
    with an `X-Padding` header."""
    unpadded = len("\r\n".join([*lines, "X-Padding: "]) + "\r\n\r\n")
    assert size >= unpadded
    lines.append("X-Padding: " + "p" * (size - unpadded))
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    assert len(head) == size
    return head


def status_of(server: ServerProcess) -> tuple[int, str]:
    """An OPTIONS request on a connection of its own: its status and its body."""
    with connect(server) as connection:
        connection.sendall(f"OPTIONS /files/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
        head, body = connection.response()
    return int(head.split(" ", 2)[1]), body.decode()


def test_a_head_over_the_limit_gets_431_and_one_at_the_limit_is_served(tmp_path: Path) -> None:
    with running(tmp_path) as server:  # the default limit, 64 KiB
        metadata = "filename " + base64.b64encode(b"n" * 8 * 1024).decode()  # within --max-metadata-size
        at_limit = creation_head(server.port, DEFAULT_MAX_HEADER_SIZE, metadata)
        with connect(server) as connection:
            connection.sendall(at_limit)
            head, _ = connection.response()
        assert head.startswith("HTTP/1.1 201"), head
        created = httpx.head(header(head, "Location") or "", headers=TUS)
        assert created.headers["Upload-Metadata"] == metadata

        with connect(server) as connection:
            connection.sendall(creation_head(server.port, DEFAULT_MAX_HEADER_SIZE + 1, metadata))
            head, body = connection.response()
            connection.assert_closed()
        assert head.startswith("HTTP/1.1 431 Request Header Fields Too Large"), head
        assert header(head, "Connection") == "close"
        assert header(head, "Content-Type") == "text/plain; charset=utf-8"
        assert body == b"request line and headers exceed 65536 bytes\n"

        # A header that never ends is refused as soon as it passes the limit, not buffered.
        with connect(server) as connection:
            connection.sendall(f"POST /files/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nX-Big: ".encode())
            connection.sendall(b"b" * (DEFAULT_MAX_HEADER_SIZE + 1024))
            head, _ = connection.response()
            connection.assert_closed()
        assert head.startswith("HTTP/1.1 431"), head

        # On a kept-alive connection, the second request's head is counted on its own.
        with connect(server) as connection:
            options = f"OPTIONS /files/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
            connection.sendall(options)
            assert connection.response()[0].startswith("HTTP/1.1 200")
            connection.sendall(creation_head(server.port, 8 * 1024))
            assert connection.response()[0].startswith("HTTP/1.1 201")
            connection.sendall(creation_head(server.port, DEFAULT_MAX_HEADER_SIZE + 1))
            assert connection.response()[0].startswith("HTTP/1.1 431")
            connection.assert_closed()

        # Pipelined requests: each head is counted on its own, however many arrive in one read; one
        # over the limit is answered after the responses before it. (A head that begins in the middle
        # of a read is counted from the next read, so 1 MiB here, well past the limit plus one read.)
        padded_options = padded_head(["OPTIONS /files/ HTTP/1.1", f"Host: 127.0.0.1:{server.port}"], 8 * 1024)
        with connect(server) as connection:
            connection.sendall(padded_options * 20)  # 160 KiB of heads, 8 KiB each
            for _ in range(20):
                assert connection.response()[0].startswith("HTTP/1.1 200")
            huge = padded_head(["OPTIONS /files/ HTTP/1.1", f"Host: 127.0.0.1:{server.port}"], MiB)
            connection.sendall(padded_options + huge)
            assert connection.response()[0].startswith("HTTP/1.1 200")
            head, body = connection.response()
            assert head.startswith("HTTP/1.1 431"), head
            assert body == b"request line and headers exceed 65536 bytes\n"
            connection.assert_closed()

        assert status_of(server)[0] == 200  # and the server goes on serving


def test_a_head_not_complete_within_the_header_timeout_gets_408(tmp_path: Path) -> None:
    with running(tmp_path, "--header-timeout", "1") as server, ExitStack() as stack:
        port = server.port
        partial_heads = [
            b"",  # connected, sends nothing
            b"PATCH /files/abc HT",  # half a request line
            f"POST /files/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTus-Resum".encode(),  # half the headers
        ]
        started = time.monotonic()
        connections = [stack.enter_context(connect(server)) for _ in partial_heads]
        for connection, partial in zip(connections, partial_heads, strict=True):
            connection.sendall(partial)
        for connection in connections:
            head, body = connection.response(timeout=5)
            assert head.startswith("HTTP/1.1 408 Request Timeout"), head
            assert header(head, "Connection") == "close"
            assert body == b"request line and headers not received within 1 s\n"
            connection.assert_closed(timeout=2)
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed < 4, elapsed

        # Keep-alive: idle between requests for longer than the header timeout is fine (uvicorn's
        # --timeout-keep-alive, 5 s, governs that gap); the next request's head has the timeout again.
        with connect(server) as connection:
            options = f"OPTIONS /files/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
            connection.sendall(options)
            assert connection.response()[0].startswith("HTTP/1.1 200")
            connection.assert_silent(during=1.5)
            connection.sendall(options)
            assert connection.response()[0].startswith("HTTP/1.1 200")
            connection.sendall(options[:10])
            started = time.monotonic()
            assert connection.response(timeout=5)[0].startswith("HTTP/1.1 408")
            connection.assert_closed(timeout=2)
            assert 0.9 <= time.monotonic() - started < 4

        # Pipelined: the stalled second request is answered 408 after the first one's response.
        with connect(server) as connection:
            started = time.monotonic()
            connection.sendall(options + options[:10])
            assert connection.response()[0].startswith("HTTP/1.1 200")
            assert connection.response(timeout=5)[0].startswith("HTTP/1.1 408")
            connection.assert_closed(timeout=2)
            assert 0.9 <= time.monotonic() - started < 4

        # ... also when the stalled head begins in the read that ends the first request's body.
        with connect(server) as connection:
            post = (
                f"POST /files/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nTus-Resumable: 1.0.0\r\n"
                "Upload-Length: 5\r\nContent-Type: application/offset+octet-stream\r\n"
                "Content-Length: 5\r\n\r\n"
            ).encode()
            connection.sendall(post)
            connection.assert_silent(during=0.3)  # the head is in; the body is awaited
            started = time.monotonic()
            connection.sendall(b"hello" + options[:10])
            assert connection.response()[0].startswith("HTTP/1.1 201")
            assert connection.response(timeout=5)[0].startswith("HTTP/1.1 408")
            connection.assert_closed(timeout=2)
            assert 0.9 <= time.monotonic() - started < 4


def test_a_slow_body_is_not_cut_by_the_header_timeout(tmp_path: Path) -> None:
    with running(tmp_path, "--header-timeout", "1") as server:
        created = httpx.post(server.url, headers={**TUS, "Upload-Length": "8"})
        assert created.status_code == 201
        url = created.headers["Location"]
        with connect(server) as connection:
            connection.sendall(
                (
                    f"PATCH {httpx.URL(url).path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                    "Tus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\n"
                    "Upload-Offset: 0\r\nContent-Length: 8\r\n\r\n"
                ).encode()
            )
            started = time.monotonic()
            for byte in b"slowbody":  # 8 bytes over 2.4 s, more than twice the header timeout
                connection.assert_silent(during=0.3)  # paces the client; nothing may arrive meanwhile
                connection.sendall(bytes([byte]))
            head, _ = connection.response()
            assert time.monotonic() - started > 2
        assert head.startswith("HTTP/1.1 204"), head
        assert header(head, "Upload-Offset") == "8"
        assert stored_file(server.data_dir, url).read_bytes() == b"slowbody"


def test_beyond_max_concurrency_requests_get_503_until_connections_close(tmp_path: Path) -> None:
    with running(tmp_path, "--max-concurrency", "2") as server, ExitStack() as stack:
        held = [stack.enter_context(connect(server)) for _ in range(2)]
        deadline = time.monotonic() + 10
        while (answer := status_of(server))[0] != 503:  # until the server has taken the held ones in
            assert time.monotonic() < deadline, answer
        assert answer == (503, "Service Unavailable")
        for connection in held:
            connection.close()
        deadline = time.monotonic() + 10
        while (answer := status_of(server))[0] != 200:  # until the server has seen them close
            assert answer[0] == 503, answer
            assert time.monotonic() < deadline, answer
        assert "Exceeded concurrency limit" in server.log()


def test_tuspy_uploads_through_two_workers_with_the_limits_in_place(tmp_path: Path) -> None:
    with running(tmp_path, "--workers", "2", "--max-header-size", "4K") as server:
        source = random_file(tmp_path / "upload.bin", 3 * MiB)
        with source.open("rb") as stream:
            upload = tus.TusClient(server.url).uploader(
                file_stream=stream, chunk_size=MiB, metadata={"filename": "upload.bin"}
            )
            upload.upload()
        assert upload.url is not None
        assert sha256_file(stored_file(server.data_dir, upload.url)) == sha256_file(source)
        downloaded = httpx.get(upload.url)
        assert hashlib.sha256(downloaded.content).hexdigest() == sha256_file(source)
        for _ in range(4):  # whichever worker takes the connection has the limit from the environment
            with connect(server) as connection:
                connection.sendall(creation_head(server.port, 4 * 1024 + 1))
                head, _ = connection.response()
            assert head.startswith("HTTP/1.1 431"), head
        assert httpx.options(server.url).status_code == 200


def test_a_body_sent_with_a_head_near_the_limit_arrives_intact(tmp_path: Path) -> None:
    """The read that crosses the limit can carry the end of the head and the start of the body: the
    head is parsed up to the limit, then the body goes on from exactly where the head ended."""
    with running(tmp_path) as server:
        for head_size in (DEFAULT_MAX_HEADER_SIZE - 100, DEFAULT_MAX_HEADER_SIZE):
            body = random_file(tmp_path / f"body-{head_size}", MiB).read_bytes()
            created = httpx.post(server.url, headers={**TUS, "Upload-Length": str(len(body))})
            url = created.headers["Location"]
            lines = [
                f"PATCH {httpx.URL(url).path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}",
                "Tus-Resumable: 1.0.0", "Content-Type: application/offset+octet-stream",
                "Upload-Offset: 0", f"Content-Length: {len(body)}",
            ]  # fmt: skip
            with connect(server) as connection:
                connection.sendall(padded_head(lines, head_size) + body)
                head, _ = connection.response()
            assert head.startswith("HTTP/1.1 204"), head
            assert stored_file(server.data_dir, url).read_bytes() == body
