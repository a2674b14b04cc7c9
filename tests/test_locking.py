"""Concurrent requests on one upload (issue point 6, PROTOCOL.md L-3): never two appends at once.

The lock is a lease on the upload row, so these tests also hold across processes; here two requests
run in one process against the app, with bodies that trickle so that they truly overlap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from tests.conftest import app_client
from tests.helpers import create, offset_of, stored_bytes
from tusserver import Settings
from tusserver.database import make_engine
from tusserver.records import UploadRecords

pytestmark = pytest.mark.anyio
OCTETS = {"Content-Type": "application/offset+octet-stream"}


async def trickle(data: bytes, pieces: int, started: asyncio.Event) -> AsyncIterator[bytes]:
    size = len(data) // pieces
    for index in range(pieces):
        yield data[index * size : (index + 1) * size]
        started.set()
        await asyncio.sleep(0.05)


async def test_two_patches_at_the_same_offset_never_both_append_l3(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    path = await create(client, 2000)
    first_body, second_body = b"A" * 1000, b"B" * 1000
    started = asyncio.Event()
    first = asyncio.create_task(
        client.patch(path, content=trickle(first_body, 10, started), headers={**OCTETS, "Upload-Offset": "0"})
    )
    await started.wait()  # the first PATCH holds the lock and is mid-body
    second = await client.patch(path, content=second_body, headers={**OCTETS, "Upload-Offset": "0"})
    statuses = sorted([(await first).status_code, second.status_code])
    assert statuses in ([204, 409], [409, 409])  # the second takes over; at most one appends
    offset = await offset_of(client, path)
    stored = stored_bytes(settings.data_dir, path)[:offset]
    assert stored in (first_body[:offset], second_body[:offset])  # one body's bytes, never interleaved


async def test_a_new_request_takes_over_a_stalled_one_l2(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """A HEAD during a stalled PATCH returns promptly with the bytes the PATCH received, and a PATCH
    from that offset completes the upload (PROTOCOL.md L-2; the stalled PATCH is told to resume)."""
    path = await create(client, 1000)
    started = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"x" * 300
        started.set()
        await asyncio.sleep(3600)  # a client that went silent with its connection open
        yield b"never"

    stalled = asyncio.create_task(
        client.patch(path, content=stalls(), headers={**OCTETS, "Upload-Offset": "0"})
    )
    await started.wait()
    await asyncio.sleep(0.05)
    async with asyncio.timeout(2):  # within about a second, not after a lock timeout
        head = await client.head(path)
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == "300"
    interrupted = await stalled
    assert interrupted.status_code == 409
    assert interrupted.headers["Upload-Offset"] == "300"
    rest = await client.patch(path, content=b"y" * 700, headers={**OCTETS, "Upload-Offset": "300"})
    assert (rest.status_code, rest.headers["Upload-Offset"]) == (204, "1000")
    assert stored_bytes(settings.data_dir, path) == b"x" * 300 + b"y" * 700


async def test_request_gets_423_when_the_holder_does_not_let_go(tmp_path: Path, database_url: str) -> None:
    settings = Settings(data_dir=tmp_path / "d", database_url=database_url, lock_timeout=0.5)
    async with app_client(settings) as client:
        path = await create(client, 10)
        upload_id = path.rsplit("/", 1)[1]
        engine = make_engine(database_url)
        try:  # a holder elsewhere that neither renews nor answers release requests (hung host)
            store = UploadRecords(engine)
            held = await store.acquire(upload_id, "hung-host:1:x", ttl=30)
            assert held is not None
            blocked = await client.patch(path, content=b"y" * 10, headers={**OCTETS, "Upload-Offset": "0"})
            assert blocked.status_code == 423
            assert "busy" in blocked.text
            assert await offset_of(client, path) == 0
            await store.close()
        finally:
            await engine.dispose()


async def test_a_lease_left_by_a_dead_process_expires(tmp_path: Path, database_url: str) -> None:
    settings = Settings(data_dir=tmp_path / "d", database_url=database_url, lock_timeout=3.0)
    async with app_client(settings) as client:
        path = await create(client, 3)
        upload_id = path.rsplit("/", 1)[1]
        engine = make_engine(database_url)
        try:  # a process that took the lease and died: lease runs out one second from now
            store = UploadRecords(engine)
            taken = await store.acquire(upload_id, "dead-host:1:x", ttl=1)
            assert taken is not None
            await store.close()
        finally:
            await engine.dispose()
        response = await client.patch(path, content=b"abc", headers={**OCTETS, "Upload-Offset": "0"})
        assert response.status_code == 204


async def test_commit_by_a_writer_that_lost_its_lease_is_refused(database_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d", database_url=database_url)
    async with app_client(settings) as client:
        upload_id = (await create(client, 3)).rsplit("/", 1)[1]
    engine = make_engine(database_url)
    try:
        store = UploadRecords(engine)
        first = await store.acquire(upload_id, "owner-1", ttl=-1)
        assert first is not None  # owner-1's lease is already expired...
        second = await store.acquire(upload_id, "owner-2", ttl=30)
        assert second is not None  # ...so owner-2 takes over
        assert await store.commit(replace(first, offset=3), "owner-1", 0, release=True) is None
        leases = [(upload_id, "owner-1"), (upload_id, "owner-2")]
        assert await store.renew(leases, ttl=30) == {"owner-2": False}
        assert await store.commit(replace(second, offset=2), "owner-2", 0, release=True) is not None
        assert (await store.get(upload_id)).offset == 2
        await store.close()
    finally:
        await engine.dispose()
