"""Concurrent requests on one upload (issue point 6, PROTOCOL.md L-3): never two appends at once.

The lock is a lease on the upload row, so these tests also hold across processes; here two requests
run in one process against the app, with bodies that trickle so that they truly overlap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from tests.conftest import app_client
from tests.helpers import create, offset_of, stored_bytes
from tusserver import Settings
from tusserver.core import utcnow
from tusserver.database import make_engine
from tusserver.store import SqlUploadStore

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
    assert (await first).status_code == 204
    assert second.status_code in {409, 423}
    assert await offset_of(client, path) == 1000
    assert stored_bytes(settings.data_dir, path)[:1000] == first_body


async def test_waiting_request_gets_423_after_lock_timeout(tmp_path: Path, database_url: str) -> None:
    settings = Settings(data_dir=tmp_path / "d", database_url=database_url, lock_timeout=0.3)
    async with app_client(settings) as client:
        path = await create(client, 10)
        started = asyncio.Event()
        slow = asyncio.create_task(
            client.patch(
                path, content=trickle(b"x" * 10, 10, started), headers={**OCTETS, "Upload-Offset": "0"}
            )
        )
        await started.wait()
        blocked = await client.patch(path, content=b"y" * 10, headers={**OCTETS, "Upload-Offset": "0"})
        assert blocked.status_code == 423
        assert "busy" in blocked.text
        assert (await slow).status_code == 204
        assert await offset_of(client, path) == 10


async def test_a_lease_left_by_a_dead_process_expires(tmp_path: Path, database_url: str) -> None:
    settings = Settings(data_dir=tmp_path / "d", database_url=database_url, lock_timeout=3.0)
    async with app_client(settings) as client:
        path = await create(client, 3)
        upload_id = path.rsplit("/", 1)[1]
        engine = make_engine(database_url)
        try:  # a process that took the lease and died: lease runs out one second from now
            store = SqlUploadStore(engine)
            taken = await store.acquire(upload_id, "dead-host:1:x", utcnow(), utcnow() + timedelta(seconds=1))
            assert taken is not None
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
        store = SqlUploadStore(engine)
        soon = utcnow() + timedelta(seconds=30)
        first = await store.acquire(upload_id, "owner-1", utcnow(), utcnow() - timedelta(seconds=1))
        assert first is not None  # owner-1's lease is already expired...
        second = await store.acquire(upload_id, "owner-2", utcnow(), soon)
        assert second is not None  # ...so owner-2 takes over
        from dataclasses import replace

        assert await store.commit(replace(first, offset=3), "owner-1", 0, release=True) is None
        assert not await store.renew(upload_id, "owner-1", soon)
        assert await store.commit(replace(second, offset=2), "owner-2", 0, release=True) is not None
        assert (await store.get(upload_id)).offset == 2
    finally:
        await engine.dispose()
