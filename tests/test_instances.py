"""Several processes on one upload store: uvicorn workers, and graceful shutdown on SIGTERM.

Real `tusserver serve` processes on loopback ports; every test runs on SQLite (several processes on
one file) and on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.helpers import MiB, random_file, raw_patch_head, sha256_file, stored_file
from tests.servers import ServerProcess, worker_pids
from tests.test_end_to_end import uploader, url_of

TUS = {"Tus-Resumable": "1.0.0"}


def test_workers_share_uploads(tmp_path: Path, database_url: str) -> None:
    server = ServerProcess(
        data_dir=tmp_path / "data", database_url=database_url, extra_args=["--workers", "2"]
    )
    server.start()
    try:
        sources = [random_file(tmp_path / f"f{index}.bin", (index + 1) * 3 * MiB) for index in range(6)]

        def upload(source: Path) -> str:
            with source.open("rb") as stream:
                job = uploader(server.url, stream, chunk_size=1 * MiB)
                job.upload()
            return url_of(job)

        with ThreadPoolExecutor(6) as pool:
            urls = list(pool.map(upload, sources))
        for source, url in zip(sources, urls, strict=True):
            assert sha256_file(stored_file(server.data_dir, url)) == sha256_file(source)
    finally:
        server.stop()
    assert server.log().count("Started server process") == 2


def _tcp_sockets(port: int) -> dict[int, str]:
    """Socket inode -> TCP state ("0A" listening, "01" established) of 127.0.0.1 sockets on `port`."""
    sockets = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            sockets[int(fields[9])] = fields[3]
    return sockets


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    with contextlib.suppress(OSError):  # the process may be gone meanwhile
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def _listening_workers(
    parent: int, port: int, also: Callable[[dict[int, set[int]]], bool] = lambda found: True
) -> dict[int, set[int]]:
    """Worker PID -> its listening sockets on `port`, once two workers listen (and `also` holds),
    polled for 20 s at most."""
    found: dict[int, set[int]] = {}
    for _ in range(400):
        listeners = {inode for inode, state in _tcp_sockets(port).items() if state == "0A"}
        found = {pid: own for pid in worker_pids(parent) if (own := _socket_inodes(pid) & listeners)}
        if len(found) == 2 and also(found):
            break
        time.sleep(0.05)
    return found


def test_workers_each_listen_and_share_a_burst_of_connections(tmp_path: Path) -> None:
    """With `--workers 2`, each worker listens on a socket of its own (SO_REUSEPORT), so 16
    connections opened at once are spread over both, not left to whichever wakes first."""
    server = ServerProcess(tmp_path / "data", f"sqlite:///{tmp_path / 'db.sqlite'}", ["--workers", "2"])
    server.start()
    assert server.process is not None
    connections: list[socket.socket] = []
    try:
        listening = _listening_workers(server.process.pid, server.port)
        assert len(listening) == 2, listening
        first, second = listening.values()
        assert not first & second  # two sockets, not one shared
        connections = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(16)]
        for connection in connections:
            connection.sendall(b"OPTIONS /files/ HTTP/1.1\r\nHost: x\r\n\r\n")
        for connection in connections:
            connection.settimeout(10)
            assert connection.recv(4096).startswith(b"HTTP/1.1 200")
        states = _tcp_sockets(server.port)
        established = {inode for inode, state in states.items() if state == "01"}
        served = [len(_socket_inodes(pid) & established) for pid in listening]
        assert sum(served) == 16
        assert min(served) > 0, served  # all 16 on one worker: 1 chance in 32,768 with the kernel's hash
        killed = next(iter(listening))
        os.kill(killed, signal.SIGKILL)  # uvicorn's supervisor starts a new worker, with its own socket
        replaced = _listening_workers(server.process.pid, server.port, lambda found: killed not in found)
        assert len(replaced) == 2, replaced
        assert killed not in replaced
    finally:
        for connection in connections:
            connection.close()
        server.stop()


def test_sigterm_commits_in_flight_bytes_and_releases_the_lock(tmp_path: Path, database_url: str) -> None:
    server = ServerProcess(data_dir=tmp_path / "data", database_url=database_url)
    server.start()
    created = httpx.post(server.url, headers={**TUS, "Upload-Length": str(4 * MiB)})
    url = created.headers["Location"]
    head = raw_patch_head(server.port, httpx.URL(url).path, 0, 4 * MiB)
    with socket.create_connection(("127.0.0.1", server.port)) as connection:
        connection.sendall(head + b"z" * MiB)  # a quarter of the body, then silence
        time.sleep(0.5)
        assert server.process is not None
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        connection.settimeout(10)
        answer = connection.recv(4096).decode("latin-1")
        server.process.wait(timeout=15)
        stopped_in = time.monotonic() - started
    assert answer.startswith("HTTP/1.1 503"), answer
    assert f"upload-offset: {MiB}" in answer.lower()
    assert stopped_in < 5  # it did not sit out the shutdown timeout waiting for the silent client
    server.start()  # same data, same database
    try:
        status = httpx.head(url, headers=TUS)
        assert status.headers["Upload-Offset"] == str(MiB)
        rest = httpx.patch(
            url,
            content=b"z" * (3 * MiB),
            headers={**TUS, "Upload-Offset": str(MiB), "Content-Type": "application/offset+octet-stream"},
            timeout=5,  # no wait for a stale lease: the stopping server released it
        )
        assert rest.status_code == 204
        assert stored_file(server.data_dir, url).read_bytes() == b"z" * (4 * MiB)
    finally:
        server.stop()


def test_kill_during_a_long_patch_loses_at_most_the_last_seconds(tmp_path: Path, database_url: str) -> None:
    """Progress is committed every --commit-interval while a body streams (issue 4, crash safety)."""
    server = ServerProcess(
        data_dir=tmp_path / "data", database_url=database_url, extra_args=["--commit-interval", "0.5"]
    )
    server.start()
    total = 64 * MiB
    created = httpx.post(server.url, headers={**TUS, "Upload-Length": str(total)})
    url = created.headers["Location"]
    head = raw_patch_head(server.port, httpx.URL(url).path, 0, total)
    piece = bytes(range(256)) * 1024  # 256 KiB
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port)) as connection:
        connection.sendall(head)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # a slow, steady client: about 2.5 MiB/s
            connection.sendall(piece)
            sent += len(piece)
            time.sleep(0.1)
        server.kill()
    server.start()
    try:
        status = httpx.head(url, headers=TUS, timeout=30)  # waits out the dead process's lease
        committed = int(status.headers["Upload-Offset"])
        assert sent - 3 * MiB <= committed <= sent  # at most ~0.5 s of data + one 1 MiB block lost
        assert (
            stored_file(server.data_dir, url).read_bytes()[:committed]
            == (piece * (sent // len(piece)))[:committed]
        )
    finally:
        server.stop()


def test_takeover_across_processes(tmp_path: Path, database_url: str) -> None:
    """A PATCH stalled on process A; the client comes back on process B (sharing the database and
    the data directory): B's HEAD gets A to commit and let go, and B's PATCH finishes the upload."""
    data_dir = tmp_path / "data"
    first, second = ServerProcess(data_dir, database_url), ServerProcess(data_dir, database_url)
    first.start()
    second.start()
    try:
        created = httpx.post(first.url, headers={**TUS, "Upload-Length": str(2 * MiB)})
        path = httpx.URL(created.headers["Location"]).path
        head = raw_patch_head(first.port, path, 0, 2 * MiB)
        with socket.create_connection(("127.0.0.1", first.port)) as stalled:
            stalled.sendall(head + b"a" * MiB)
            time.sleep(0.5)
            started = time.monotonic()
            status = httpx.head(f"http://127.0.0.1:{second.port}{path}", headers=TUS, timeout=30)
            took = time.monotonic() - started
            assert status.headers["Upload-Offset"] == str(MiB)
            rest = httpx.patch(
                f"http://127.0.0.1:{second.port}{path}",
                content=b"b" * MiB,
                headers={**TUS, "Upload-Offset": str(MiB), "Content-Type": "application/offset+octet-stream"},
            )
            assert rest.status_code == 204
        assert took < 3.0  # the holder noticed within about a second, no lock timeout
        assert stored_file(data_dir, path).read_bytes() == b"a" * MiB + b"b" * MiB
    finally:
        first.stop()
        second.stop()
