"""A PostgreSQL that stops answering (packets dropped, nothing refused) behind a real TCP proxy: every
request answers 503 + Retry-After within the database timeout instead of hanging, a full pool answers
503 too, a writer whose lease can no longer be renewed stops, and everything works again, with nothing
committed lost and the lease keeper still alive, once the network is back (issue 8, points 5 and 6)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import new_postgres_database
from tests.netfaults import BlackholeProxy
from tests.servers import ServerProcess

pytestmark = pytest.mark.postgresql
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}
DATABASE_TIMEOUT = 1.0
LOCK_TTL = 3.0
PROMPT = DATABASE_TIMEOUT * 2 + 2.5
"""The longest a request may take to answer while the database is blackholed (its bound plus slack)."""


class Deployment:
    def __init__(self, tmp_path: Path) -> None:
        self.direct_url = new_postgres_database()
        target = make_url(self.direct_url)
        self.proxy = BlackholeProxy(target.port or 5432)
        proxied = target.set(port=self.proxy.port).render_as_string(hide_password=False)
        self.server = ServerProcess(
            data_dir=tmp_path / "data",
            database_url=proxied,
            extra_args=[
                "--database-timeout", str(DATABASE_TIMEOUT), "--database-pool-size", "3",
                "--lock-ttl", str(LOCK_TTL), "--commit-interval", "60", "--cleanup-interval", "0",
            ],
        )  # fmt: skip

    def start_patch(
        self, sock: socket.socket, upload_id: str, offset: int, length: int, first: bytes
    ) -> float:
        """Send a PATCH's headers and its `first` bytes; return once the request holds the lease."""
        sock.sendall(
            f"PATCH /files/{upload_id} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
            f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: {offset}\r\n"
            f"Content-Length: {length}\r\n\r\n".encode()
            + first
        )
        started = time.monotonic()
        while not self.lease_is_live(upload_id):
            assert time.monotonic() - started < 10, "the PATCH never took the lease"
        return started

    def lease_is_live(self, upload_id: str) -> bool:
        async def query() -> bool:
            connection = await asyncpg.connect(self.direct_url)
            try:
                live = await connection.fetchval(
                    "SELECT lock_owner IS NOT NULL AND lock_expires_at > now() FROM upload WHERE id = $1",
                    upload_id,
                )
                return bool(live)
            finally:
                await connection.close()

        return asyncio.run(query())


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    deployment = Deployment(tmp_path)
    try:
        deployment.server.start()
        yield deployment
    finally:
        deployment.server.stop()
        deployment.proxy.close()
    assert "Traceback" not in deployment.server.log()


def _timed(call: object) -> tuple[httpx.Response, float]:
    assert callable(call)
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def _assert_outage(response: httpx.Response, elapsed: float) -> None:
    request = response.request.method
    assert response.status_code == 503, (request, response.status_code, response.text)
    assert response.headers["Retry-After"].isdigit()
    if request != "HEAD":
        assert response.text.strip() == "database unavailable, retry later"
    assert elapsed < PROMPT, (request, elapsed)


def _wait_until_served(url: str, deadline: float = 20.0) -> httpx.Response:
    end = time.monotonic() + deadline
    while True:
        response = httpx.head(url, headers=TUS, timeout=10)
        if response.status_code == 200 or time.monotonic() > end:
            return response
        time.sleep(0.2)


def test_blackholed_database_answers_503_promptly_and_recovers(deployment: Deployment) -> None:
    server = deployment.server
    created = httpx.post(server.url, headers={**TUS, "Upload-Length": "10"})
    url = created.headers["Location"]
    assert httpx.patch(url, content=b"01234", headers={**OCTETS, "Upload-Offset": "0"}).status_code == 204

    deployment.proxy.blackhole()
    for call in (
        lambda: httpx.head(url, headers=TUS, timeout=30),
        lambda: httpx.post(server.url, headers={**TUS, "Upload-Length": "10"}, timeout=30),
        lambda: httpx.patch(url, content=b"56789", headers={**OCTETS, "Upload-Offset": "5"}, timeout=30),
        lambda: httpx.delete(url, headers=TUS, timeout=30),
    ):
        _assert_outage(*_timed(call))
    # More requests than pooled connections, all at once: the ones waiting for a connection give up
    # within the same bound (pool exhaustion is an outage too, never a 500).
    with ThreadPoolExecutor(10) as pool:
        answers = list(
            pool.map(lambda _: _timed(lambda: httpx.head(url, headers=TUS, timeout=30)), range(10))
        )
    for response, elapsed in answers:
        _assert_outage(response, elapsed)

    deployment.proxy.restore()
    recovered = _wait_until_served(url)
    assert recovered.status_code == 200
    assert recovered.headers["Upload-Offset"] == "5"  # nothing committed was lost

    # The lease keeper survived the outage: a PATCH that streams longer than the lease lifetime
    # keeps its lease (renewed by the keeper alone: checkpoints are 60 s apart).
    upload_id = url.rsplit("/", 1)[1]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        started = deployment.start_patch(sock, upload_id, offset=5, length=5, first=b"56")
        while time.monotonic() - started < 2 * LOCK_TTL:
            assert deployment.lease_is_live(upload_id)
            time.sleep(0.25)
        sock.sendall(b"789")
        assert sock.recv(4096).startswith(b"HTTP/1.1 204")
    finished = httpx.head(url, headers=TUS)
    assert finished.headers["Upload-Offset"] == "10"
    assert (server.data_dir / "uploads" / upload_id).read_bytes() == b"0123456789"


def test_writer_stops_when_its_lease_cannot_be_renewed(deployment: Deployment) -> None:
    server = deployment.server
    created = httpx.post(server.url, headers={**TUS, "Upload-Length": "1000"})
    url = created.headers["Location"]
    upload_id = url.rsplit("/", 1)[1]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        deployment.start_patch(sock, upload_id, offset=0, length=1000, first=b"a" * 10)
        deployment.proxy.blackhole()
        blackholed_at = time.monotonic()
        sock.setblocking(False)
        answer = b""
        while not answer:  # keep the body flowing so that only the lease can stop the request
            assert time.monotonic() - blackholed_at < LOCK_TTL + PROMPT + 2, "the writer never stopped"
            try:
                answer = sock.recv(4096)
            except BlockingIOError:
                with contextlib.suppress(BlockingIOError):
                    sock.send(b"b")
                time.sleep(0.1)
    status = answer.split(b"\r\n", 1)[0]
    assert status in {b"HTTP/1.1 503 Service Unavailable", b"HTTP/1.1 409 Conflict"}, answer
    deployment.proxy.restore()
    resumed = _wait_until_served(url)
    assert resumed.status_code == 200
    offset = int(resumed.headers["Upload-Offset"])
    assert offset in {0, 10}  # what was committed before the outage, never bytes of a lost lease
    rest = b"c" * (1000 - offset)
    done = httpx.patch(url, content=rest, headers={**OCTETS, "Upload-Offset": str(offset)}, timeout=30)
    assert done.status_code == 204, done.text
    assert (server.data_dir / "uploads" / upload_id).read_bytes()[offset:] == rest
