"""Faults on the write path, by real means, against real server processes (issue 7, points 4-11):
a lease stolen in the database, a server frozen past its lease (SIGSTOP) while another instance takes
over, a full file system, a file size limit, silent and slow clients, SIGTERM during checksummed
PATCHes and during creation-with-upload. Every answer is a clear 4xx/5xx, never a 500, and nothing
committed is lost or overwritten.
"""

from __future__ import annotations

import base64
import hashlib
import os
import resource
import signal
import socket
import time
from pathlib import Path

import httpx

from tests.faults import answer_of, header, raw_request_head, small_disk, steal_lease, stored_row
from tests.helpers import MiB, stored_file
from tests.servers import ServerProcess

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}


def create(server: ServerProcess, length: int) -> tuple[str, str]:
    """A new upload on `server`: its URL and its ID."""
    created = httpx.post(server.url, headers={**TUS, "Upload-Length": str(length)})
    assert created.status_code == 201, created.text
    url = created.headers["Location"]
    return url, url.rsplit("/", 1)[1]


def patch(url: str, offset: int, body: bytes, timeout: float = 30) -> httpx.Response:
    return httpx.patch(url, content=body, headers={**OCTETS, "Upload-Offset": str(offset)}, timeout=timeout)


def wait_for_offset(database_url: str, upload_id: str, offset: int, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while stored_row(database_url, upload_id).offset != offset:
        assert time.monotonic() < deadline, f"offset {offset} was not committed within {within} s"
        time.sleep(0.05)


def no_tracebacks(*servers: ServerProcess) -> None:
    for server in servers:
        assert "Traceback" not in server.log(), server.log()[-3000:]


def test_a_stolen_lease_stops_the_writer_with_409_and_commits_nothing(
    tmp_path: Path, database_url: str
) -> None:
    server = ServerProcess(tmp_path / "data", database_url, ["--commit-interval", "60"])
    server.start()
    try:
        url, upload_id = create(server, 4 * MiB)
        path = httpx.URL(url).path
        with socket.create_connection(("127.0.0.1", server.port)) as connection:
            connection.sendall(raw_request_head(server.port, "PATCH", path, 4 * MiB, "Upload-Offset: 0"))
            connection.sendall(b"a" * MiB)
            steal_lease(database_url, upload_id)  # another instance's takeover, as the row shows it
            started = time.monotonic()
            answer = answer_of(connection)
        assert answer.startswith("HTTP/1.1 409"), answer
        assert time.monotonic() - started < 5  # noticed at the next renewal, about a second
        row = stored_row(database_url, upload_id)
        assert row.offset == 0  # nothing committed under a lease that was not its own
        no_tracebacks(server)
    finally:
        server.stop()


def test_a_frozen_writer_past_its_lease_never_overwrites_the_next_writer(
    tmp_path: Path, database_url: str
) -> None:
    """Fencing: process A is stopped (SIGSTOP, a stalled loop or a long GC pause) past its lease; B
    takes over and finishes the upload; when A wakes with more bytes in its socket, it writes none."""
    data_dir = tmp_path / "data"
    first = ServerProcess(data_dir, database_url, ["--lock-ttl", "2", "--commit-interval", "0.2"])
    second = ServerProcess(data_dir, database_url, ["--lock-ttl", "2"])
    first.start()
    second.start()
    try:
        url, upload_id = create(first, 2 * MiB)
        path = httpx.URL(url).path
        assert first.process is not None
        with socket.create_connection(("127.0.0.1", first.port)) as connection:
            connection.sendall(raw_request_head(first.port, "PATCH", path, 2 * MiB, "Upload-Offset: 0"))
            connection.sendall(b"a" * (512 * 1024))
            wait_for_offset(database_url, upload_id, 512 * 1024)  # A's checkpoint committed them
            first.process.send_signal(signal.SIGSTOP)
            try:
                rest = patch(f"http://127.0.0.1:{second.port}{path}", 512 * 1024, b"b" * (1536 * 1024))
                assert rest.status_code == 204, rest.text  # B waited out A's lease, by the DB's clock
                connection.sendall(b"a" * (512 * 1024))  # what A finds in its socket when it wakes
            finally:
                first.process.send_signal(signal.SIGCONT)
            answer = answer_of(connection)
        assert answer.startswith("HTTP/1.1 409"), answer
        assert stored_file(data_dir, url).read_bytes() == b"a" * (512 * 1024) + b"b" * (1536 * 1024)
        assert stored_row(database_url, upload_id).offset == 2 * MiB
        no_tracebacks(first, second)
    finally:
        first.stop()
        second.stop()


def test_the_free_space_reserve_answers_507_and_delete_frees_room(tmp_path: Path) -> None:
    """The data directory and the SQLite database share one small disk: new bytes stop at the reserve
    with 507, the database can still commit, DELETE frees room and the upload resumes intact."""
    with small_disk(tmp_path / "data", 64) as data_dir:
        server = ServerProcess(data_dir, f"sqlite:///{data_dir / 'tusserver.db'}", ["--min-free-space", "8M"])
        server.start()
        try:
            too_big = httpx.post(server.url, headers={**TUS, "Upload-Length": str(100 * MiB)})
            assert too_big.status_code == 507  # refused up front: it cannot fit
            assert "storage" in too_big.text
            url, _ = create(server, 48 * MiB)
            other_url, _ = create(server, 20 * MiB)
            assert patch(other_url, 0, b"o" * (20 * MiB)).status_code == 204
            payload = os.urandom(48 * MiB)
            full = patch(url, 0, payload)
            assert full.status_code == 507, full.text
            assert "no room" in full.text
            kept = int(httpx.head(url, headers=TUS).headers["Upload-Offset"])
            assert 20 * MiB < kept < 40 * MiB  # everything up to the reserve was kept
            assert httpx.delete(other_url, headers=TUS).status_code == 204  # DELETE works on a full disk
            assert patch(url, kept, payload[kept:]).status_code == 204
            assert (
                hashlib.sha256(stored_file(data_dir, url).read_bytes()).digest()
                == hashlib.sha256(payload).digest()
            )
            no_tracebacks(server)
        finally:
            server.stop()


def test_a_full_file_system_answers_507_and_keeps_what_reached_it(tmp_path: Path, database_url: str) -> None:
    """No reserve, and something else fills the disk after the upload was created: the kernel itself
    says ENOSPC part way through the body."""
    with small_disk(tmp_path / "data", 24) as data_dir:
        server = ServerProcess(data_dir, database_url, ["--min-free-space", "0"])
        server.start()
        try:
            url, _ = create(server, 20 * MiB)
            filler = data_dir / "someone-else.bin"
            filler.write_bytes(b"\0" * (10 * MiB))
            payload = os.urandom(20 * MiB)
            full = patch(url, 0, payload)
            assert full.status_code == 507, full.text
            kept = int(httpx.head(url, headers=TUS).headers["Upload-Offset"])
            assert 10 * MiB < kept <= 14 * MiB  # all that fit
            assert stored_file(data_dir, url).read_bytes()[:kept] == payload[:kept]
            assert httpx.options(server.url).status_code == 200  # the server keeps serving
            filler.unlink()  # the operator frees space
            assert patch(url, kept, payload[kept:]).status_code == 204
            assert stored_file(data_dir, url).read_bytes() == payload
            no_tracebacks(server)
        finally:
            server.stop()


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (8 * MiB, 8 * MiB))


def test_a_file_size_limit_answers_507_not_a_dead_server(tmp_path: Path, database_url: str) -> None:
    server = ServerProcess(tmp_path / "data", database_url, preexec=_limit_file_size)
    server.start()
    try:
        url, _ = create(server, 12 * MiB)
        limited = patch(url, 0, b"f" * (12 * MiB))
        assert limited.status_code == 507, limited.text
        assert int(httpx.head(url, headers=TUS).headers["Upload-Offset"]) == 8 * MiB
        assert server.process is not None
        assert server.process.poll() is None  # no SIGXFSZ death
        no_tracebacks(server)
    finally:
        server.stop()


def test_a_silent_client_times_out_keeping_its_bytes(tmp_path: Path, database_url: str) -> None:
    server = ServerProcess(tmp_path / "data", database_url, ["--network-timeout", "1"])
    server.start()
    try:
        url, upload_id = create(server, MiB)
        path = httpx.URL(url).path
        with socket.create_connection(("127.0.0.1", server.port)) as connection:
            connection.sendall(raw_request_head(server.port, "PATCH", path, MiB, "Upload-Offset: 0"))
            connection.sendall(b"s" * (300 * 1024))
            started = time.monotonic()
            answer = answer_of(connection)
            waited = time.monotonic() - started
            assert answer.startswith("HTTP/1.1 408"), answer
            assert header(answer, "Upload-Offset") == str(300 * 1024)
            assert 0.9 < waited < 4
            # its lease is gone with it: the next request does not wait for a lock
            rest = patch(url, 300 * 1024, b"s" * (MiB - 300 * 1024), timeout=5)
            assert rest.status_code == 204
        assert stored_row(database_url, upload_id).offset == MiB
        no_tracebacks(server)
    finally:
        server.stop()


def test_a_slow_client_loses_at_most_the_commit_interval_to_kill_9(tmp_path: Path, database_url: str) -> None:
    """50 KiB/s, in pieces far smaller than a storage block: progress is still committed every
    --commit-interval, so kill -9 loses about that much."""
    server = ServerProcess(tmp_path / "data", database_url, ["--commit-interval", "1", "--lock-ttl", "2"])
    server.start()
    url, upload_id = create(server, 4 * MiB)
    path = httpx.URL(url).path
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port)) as connection:
        connection.sendall(raw_request_head(server.port, "PATCH", path, 4 * MiB, "Upload-Offset: 0"))
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            connection.sendall(b"w" * (5 * 1024))
            sent += 5 * 1024
            time.sleep(0.1)
        server.kill()
    committed = stored_row(database_url, upload_id).offset
    assert sent - 2 * 50 * 1024 <= committed <= sent  # at most ~2 s of 50 KiB/s lost
    assert stored_file(tmp_path / "data", url).read_bytes()[:committed] == b"w" * committed


def _checksum_header(body: bytes) -> str:
    return "Upload-Checksum: sha1 " + base64.b64encode(hashlib.sha1(body).digest()).decode()


def test_sigterm_during_a_checksummed_patch_is_503_and_stores_nothing(
    tmp_path: Path, database_url: str
) -> None:
    server = ServerProcess(tmp_path / "data", database_url)
    server.start()
    url, upload_id = create(server, 2 * MiB)
    path = httpx.URL(url).path
    body = b"c" * (2 * MiB)
    with socket.create_connection(("127.0.0.1", server.port)) as connection:
        head = raw_request_head(
            server.port, "PATCH", path, len(body), "Upload-Offset: 0", _checksum_header(body)
        )
        connection.sendall(head + body[:MiB])
        time.sleep(0.3)  # let the server read it (nothing to poll: it must not commit anything)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        answer = answer_of(connection)
    server.process.wait(timeout=15)
    assert answer.startswith("HTTP/1.1 503"), answer
    assert header(answer, "Retry-After") is not None
    assert stored_row(database_url, upload_id).offset == 0
    no_tracebacks(server)


def test_sigterm_during_creation_with_upload_answers_201_with_the_offset(
    tmp_path: Path, database_url: str
) -> None:
    """No orphan the client cannot name: the upload exists, so it gets its Location and offset."""
    server = ServerProcess(tmp_path / "data", database_url)
    server.start()
    with socket.create_connection(("127.0.0.1", server.port)) as connection:
        head = raw_request_head(server.port, "POST", "/files/", 4 * MiB, f"Upload-Length: {4 * MiB}")
        connection.sendall(head + b"p" * MiB)
        time.sleep(0.3)  # the server reads the megabyte
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        answer = answer_of(connection)
    server.process.wait(timeout=15)
    assert answer.startswith("HTTP/1.1 201"), answer
    location = header(answer, "Location")
    assert location is not None
    assert header(answer, "Upload-Offset") == str(MiB)
    assert stored_row(database_url, location.rsplit("/", 1)[1]).offset == MiB
    no_tracebacks(server)


def _limit_open_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_too_many_open_files_is_503_and_the_server_recovers(tmp_path: Path, database_url: str) -> None:
    """EMFILE by real means: the server's descriptor limit is filled with idle keep-alive connections,
    so the PATCH's file cannot be opened."""
    server = ServerProcess(tmp_path / "data", database_url, preexec=_limit_open_files)
    server.start()
    idle: list[socket.socket] = []
    try:
        assert server.process is not None
        pid = server.process.pid
        url, upload_id = create(server, 10)
        path = httpx.URL(url).path
        patcher = socket.create_connection(("127.0.0.1", server.port))
        idle.append(patcher)
        deadline = time.monotonic() + 20
        while _open_fds(pid) < 64:  # each accepted connection takes one descriptor
            assert time.monotonic() < deadline, f"stuck at {_open_fds(pid)} descriptors"
            idle.append(socket.create_connection(("127.0.0.1", server.port)))
            time.sleep(0.01)
        patcher.sendall(raw_request_head(server.port, "PATCH", path, 5, "Upload-Offset: 0") + b"12345")
        answer = answer_of(patcher)
        assert answer.startswith("HTTP/1.1 503"), answer
        assert header(answer, "Retry-After") is not None
        assert stored_row(database_url, upload_id).offset == 0
        for connection in idle:
            connection.close()
        idle.clear()
        deadline = time.monotonic() + 10
        while (answered := patch(url, 0, b"12345", timeout=5)).status_code != 204:
            assert time.monotonic() < deadline, answered.text  # descriptors come back as sockets close
            time.sleep(0.1)
        no_tracebacks(server)
    finally:
        for connection in idle:
            connection.close()
        server.stop()
