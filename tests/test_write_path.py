"""The write pipeline through the ASGI app (issue 7): a file gone under a committed offset, checksummed
bodies that are taken over, requests during shutdown, the lease state machine, malloc tuning in every
process, and SQLite's durability under --fsync."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import AppClient
from tests.helpers import BASE, create, offset_of, patch, upload_ids
from tests.servers import REPO_ROOT, ServerProcess, worker_pids
from tusserver import Settings
from tusserver.allocator import MALLOC_ENV, tune_malloc
from tusserver.core import Upload, utcnow
from tusserver.locking import Lease, LeaseState, UploadLocks
from tusserver.pipeline import READ_AHEAD
from tusserver.records import UploadRecords
from tusserver.statements import SqliteRunner
from tusserver.storage import LocalStorage

pytestmark = pytest.mark.anyio
OCTETS = {"Content-Type": "application/offset+octet-stream"}


async def test_a_file_missing_under_a_committed_offset_is_410(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    path = await create(client, 10)
    assert (await patch(client, path, 0, b"01234")).status_code == 204
    (settings.uploads_dir / path.rsplit("/", 1)[1]).unlink()  # removed behind the server's back
    for _ in range(2):  # the same clear answer every time, never a 500
        gone = await patch(client, path, 5, b"56789")
        assert gone.status_code == 410
        assert "missing" in gone.text


async def test_a_checksummed_patch_that_is_taken_over_is_409_and_stores_nothing(settings: Settings) -> None:
    app_client = AppClient(settings)
    async with app_client as client:
        path = await create(client, 1000)
        body = b"x" * 1000
        digest = base64.b64encode(hashlib.sha1(body).digest()).decode()
        started = asyncio.Event()

        async def stalls() -> AsyncIterator[bytes]:
            yield body[:300]
            started.set()
            await asyncio.sleep(3600)
            yield body[300:]

        headers = {**OCTETS, "Upload-Offset": "0", "Upload-Checksum": f"sha1 {digest}"}
        stalled = asyncio.create_task(client.patch(path, content=stalls(), headers=headers))
        await started.wait()
        await _until_leased(app_client.app.state.service.records, path.rsplit("/", 1)[1])
        async with asyncio.timeout(5):
            assert await offset_of(client, path) == 0  # the HEAD takes over: nothing of it counted
        interrupted = await stalled
        assert interrupted.status_code == 409
        assert interrupted.headers["Upload-Offset"] == "0"


async def _until_leased(records: UploadRecords, upload_id: str) -> None:
    """Poll (every 10 ms, 5 s at most) until a request holds the upload's lease: a PATCH takes it
    with a write that commits with its group, some loop turns after its first bytes were sent."""
    for _ in range(500):
        if (await records.get_with_lock(upload_id))[1]:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the PATCH never took its lease")


async def test_a_request_that_starts_during_shutdown_is_503(settings: Settings) -> None:
    app_client = AppClient(settings)
    async with app_client as client:
        path = await create(client, 10)
        app_client.app.state.service.locks.stop_all()  # what SIGTERM does
        stopped = await patch(client, path, 0, b"0123456789")
        assert stopped.status_code == 503
        assert stopped.headers["Retry-After"]
        assert await offset_of(client, path) == 0


async def test_creation_with_a_bad_checksum_creates_nothing_cu7(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    headers = {**OCTETS, "Upload-Length": "5", "Upload-Checksum": "sha1 " + "A" * 27 + "="}
    before = upload_ids(settings.resolved_database_url)
    refused = await client.post(BASE, headers=headers, content=b"hello")
    assert refused.status_code == 460
    assert upload_ids(settings.resolved_database_url) == before
    assert "Location" not in refused.headers
    assert list(settings.uploads_dir.iterdir()) == []


def _lease() -> Lease:
    now = utcnow()
    return Lease(Upload(id="a" * 32, offset=0, length=1, created_at=now, updated_at=now), "me", ttl=6)


def test_the_lease_state_machine_takes_only_legal_steps() -> None:
    stops: list[LeaseState] = []
    lease = _lease()
    lease.on_stop = lambda: stops.append(lease.state)
    assert lease.move(LeaseState.TAKEOVER)
    assert not lease.move(LeaseState.TIMED_OUT)  # a weaker reason never overrides
    assert lease.move(LeaseState.SHUTDOWN)  # shutdown does: the answer becomes 503
    assert not lease.move(LeaseState.HELD)
    assert lease.move(LeaseState.LOST)
    assert lease.move(LeaseState.RELEASED)
    assert not lease.move(LeaseState.LOST)
    assert stops == [LeaseState.TAKEOVER, LeaseState.SHUTDOWN, LeaseState.LOST]
    assert lease.freed.is_set()


def test_a_lease_is_not_trusted_past_its_ttl_since_the_last_renewal() -> None:
    lease = _lease()
    now = time.monotonic()
    lease.renewed(now)
    assert lease.trusted(now + 4.9)
    assert not lease.trusted(now + 5.1)  # ttl 6 s less a second's margin
    assert lease.state is LeaseState.LOST


def test_malloc_tuning_applies_in_this_process_and_reaches_worker_processes(tmp_path: Path) -> None:
    assert tune_malloc()  # create_app does this in every process, embedders included
    server = ServerProcess(tmp_path / "data", f"sqlite:///{tmp_path / 'db.sqlite'}", ["--workers", "2"])
    server.start()
    try:
        assert server.process is not None
        deadline = time.monotonic() + 20
        while len(workers := worker_pids(server.process.pid)) < 2:
            assert time.monotonic() < deadline, "the two workers did not start"
            time.sleep(0.1)
        assert len(workers) == 2
        for pid in workers:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            for name, value in MALLOC_ENV.items():
                assert f"{name}={value}".encode() in environ
    finally:
        server.stop()


async def test_fsync_makes_sqlite_commit_with_synchronous_full(tmp_path: Path) -> None:
    for fsync, expected in ((False, 1), (True, 2)):  # NORMAL = 1, FULL = 2
        runner = SqliteRunner(str(tmp_path / f"db-{fsync}.sqlite"), fsync=fsync)
        try:
            ran = await runner.run(sa.text("PRAGMA synchronous"))
            assert ran.rows[0][0] == expected
        finally:
            await runner.close()


def test_fsync_uploads_end_to_end(tmp_path: Path, database_url: str) -> None:
    server = ServerProcess(tmp_path / "data", database_url, ["--fsync"])
    server.start()
    try:
        tus = {"Tus-Resumable": "1.0.0"}
        url = httpx.post(server.url, headers={**tus, "Upload-Length": "6"}).headers["Location"]
        for offset, piece in ((0, b"abc"), (3, b"def")):
            answer = httpx.patch(url, content=piece, headers={**tus, **OCTETS, "Upload-Offset": str(offset)})
            assert answer.status_code == 204
        assert httpx.get(url).content == b"abcdef"
    finally:
        server.stop()


def test_serve_help_lists_the_write_path_flags() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "tusserver", "serve", "--help"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert "--network-timeout" in shown.stdout
    assert "--min-free-space" in shown.stdout


class _PlainStorage(LocalStorage):
    capabilities = frozenset[str]()


async def test_tus_extension_follows_the_storage_capabilities(settings: Settings) -> None:
    app_client = AppClient(settings)
    async with app_client as client:
        service = app_client.app.state.service
        service.storage = _PlainStorage(settings.uploads_dir)
        try:
            extensions = (await client.options(BASE)).headers["Tus-Extension"].split(",")
            assert "concatenation" not in extensions
            assert "creation" in extensions
            refused = await client.post(BASE, headers={"Upload-Length": "5", "Upload-Concat": "partial"})
            assert refused.status_code == 400
        finally:
            service.storage.close()


@pytest.mark.parametrize("size", [1_500_000, READ_AHEAD + (2 << 20)])
async def test_a_large_body_is_read_while_the_lease_is_taken_and_stored_whole(
    settings: Settings, size: int
) -> None:
    """A PATCH that must wait for the lease reads its body's first bytes meanwhile (at most
    READ_AHEAD), and every byte lands in order once it holds the lease."""
    chunk = 64 << 10
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    app_client = AppClient(settings)
    async with app_client as client:
        path = await create(client, size)
        consumed = [0]
        read_while_held = asyncio.Event()

        async def chunks() -> AsyncIterator[bytes]:
            for start in range(0, size, chunk):
                piece = body[start : start + chunk]
                consumed[0] = start + len(piece)
                if consumed[0] >= min(size, READ_AHEAD):
                    read_while_held.set()
                yield piece

        locks: UploadLocks = app_client.app.state.service.locks
        async with locks.hold(path.rsplit("/", 1)[1]):  # another request holds the upload
            waiting = asyncio.create_task(
                client.patch(path, content=chunks(), headers={**OCTETS, "Upload-Offset": "0"})
            )
            async with asyncio.timeout(5):
                await read_while_held.wait()
            for _ in range(50):  # loop turns to read on in, if it would (it must not: the limit)
                await asyncio.sleep(0)
            assert min(size, READ_AHEAD) <= consumed[0] <= READ_AHEAD + chunk
        answer = await waiting
        assert answer.status_code == 204, answer.text
        assert answer.headers["Upload-Offset"] == str(size)
        stored = (settings.uploads_dir / path.rsplit("/", 1)[1]).read_bytes()
        assert hashlib.sha256(stored).digest() == hashlib.sha256(body).digest()


async def test_a_body_read_ahead_for_a_wrong_offset_stores_nothing(settings: Settings) -> None:
    async with AppClient(settings) as client:
        path = await create(client, 2 << 20)
        assert (await patch(client, path, 0, b"a" * 1000)).status_code == 204
        wrong = await client.patch(
            path, content=_in_chunks(b"b" * (1 << 20)), headers={**OCTETS, "Upload-Offset": "0"}
        )
        assert wrong.status_code == 409
        assert wrong.headers["Upload-Offset"] == "1000"
        assert (settings.uploads_dir / path.rsplit("/", 1)[1]).read_bytes() == b"a" * 1000
        assert await offset_of(client, path) == 1000


async def _in_chunks(data: bytes, size: int = 64 << 10) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_the_keeper_leaves_a_lease_whose_release_is_under_way_to_that_release(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A request's commit released the row, and the request has not yet heard so when the keeper
    renews: that lease is not reported lost (it was, before, as `lock_lost` under load). A lease
    whose row another request took is still found lost."""
    app_client = AppClient(settings)
    async with app_client as client:
        service = app_client.app.state.service
        locks: UploadLocks = service.locks
        released, taken = [(await create(client, 10)).rsplit("/", 1)[1] for _ in range(2)]
        async with locks.hold(released) as releasing, locks.hold(taken) as stolen:
            releasing.releasing = True
            await service.records.release(released, releasing.owner)  # the row is free already
            await service.records.release(taken, stolen.owner)  # behind its holder's back
            assert await service.records.acquire(taken, "another:1", 60) is not None
            await locks.beat()
            assert releasing.state is LeaseState.HELD
            assert stolen.state is LeaseState.LOST
    assert [
        record.getMessage().split()[0] for record in caplog.records if "lock_lost" in record.getMessage()
    ] == ["lock_lost"]
