"""The `Storage` contract (tusserver/core.py), run against every backend: what the write pipeline and
the upload service rely on. A new backend joins by adding itself to `BACKENDS`."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from tusserver.core import Storage, Upload, new_upload_id, utcnow
from tusserver.errors import UploadDataLost
from tusserver.storage import LocalStorage

pytestmark = pytest.mark.anyio
BACKENDS: dict[str, Callable[[Path], Storage]] = {
    "local": lambda root: LocalStorage(root / "uploads", min_free_space="0"),
    # with fsync every block goes through the storage threads: the other half of the local writer
    "local-fsync": lambda root: LocalStorage(root / "uploads", fsync=True, min_free_space="0"),
}


@pytest.fixture(params=sorted(BACKENDS))
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    backend = BACKENDS[request.param](tmp_path)
    yield backend
    close = getattr(backend, "close", None)
    if close is not None:
        close()


def new_upload(length: int | None, offset: int = 0, concat: str | None = None) -> Upload:
    now = utcnow()
    return Upload(
        id=new_upload_id(), offset=offset, length=length, concat=concat, created_at=now, updated_at=now
    )


async def stored(storage: Storage, upload: Upload) -> bytes:
    return b"".join([block async for block in await storage.read(upload)])


async def write(storage: Storage, upload: Upload, *chunks: bytes) -> int:
    writer = storage.writer(upload)
    for chunk in chunks:
        await writer.write(chunk)
    return (await writer.close()).written


async def test_writes_append_at_the_offset_and_report_what_they_stored(storage: Storage) -> None:
    upload = new_upload(10)
    upload = replace(upload, storage=await storage.create(upload))
    assert await write(storage, upload, b"012", b"34") == 5
    upload = replace(upload, offset=5)
    assert await write(storage, upload, b"56789") == 5
    upload = replace(upload, offset=10)
    await storage.finish(upload)
    assert await stored(storage, upload) == b"0123456789"


async def test_bytes_past_the_offset_are_debris_that_the_next_write_replaces(storage: Storage) -> None:
    upload = new_upload(6)
    await storage.create(upload)
    await write(storage, upload, b"abcdefgh")  # a write whose commit never happened
    assert await write(storage, replace(upload, offset=2), b"CDEF") == 4
    done = replace(upload, offset=6)
    await storage.finish(done)
    assert await stored(storage, done) == b"abCDEF"


async def test_a_writer_feeds_the_checksum_with_every_byte_it_stores(storage: Storage) -> None:
    upload = new_upload(None)
    await storage.create(upload)
    hasher = hashlib.sha256()
    writer = storage.writer(upload, hasher)
    chunks = [bytes([n]) * 70_000 for n in range(40)]  # several blocks' worth
    for chunk in chunks:
        await writer.write(chunk)
    assert (await writer.close()).written == sum(map(len, chunks))
    assert hasher.digest() == hashlib.sha256(b"".join(chunks)).digest()


async def test_flush_stores_what_was_given_and_abort_stores_nothing_more(storage: Storage) -> None:
    upload = new_upload(None)
    await storage.create(upload)
    writer = storage.writer(upload)
    await writer.write(b"kept")
    assert (await writer.flush()).written == 4
    await writer.write(b"x")
    assert (await writer.abort()).written in (4, 5)  # held back bytes may or may not be out
    assert (await stored(storage, replace(upload, offset=4))) == b"kept"


async def test_reads_serve_committed_ranges_only(storage: Storage) -> None:
    upload = new_upload(8)
    await storage.create(upload)
    await write(storage, upload, b"01234567")
    half = replace(upload, offset=4)  # only four bytes are committed
    assert await stored(storage, half) == b"0123"
    assert b"".join([b async for b in await storage.read(replace(upload, offset=8), 2, 5)]) == b"234"


async def test_a_vanished_upload_is_reported_as_lost(storage: Storage) -> None:
    upload = new_upload(8)
    await storage.create(upload)
    await write(storage, upload, b"0123")
    await storage.delete(upload)
    writer = storage.writer(replace(upload, offset=4))

    async def write_and_close() -> None:  # the error may come from either: backends buffer
        await writer.write(b"4567")
        await writer.close()

    with pytest.raises(UploadDataLost):
        await write_and_close()
    await writer.abort()


async def test_delete_is_idempotent_and_zero_length_uploads_finish(storage: Storage) -> None:
    upload = new_upload(0)
    await storage.create(upload)
    await storage.finish(upload)
    assert await stored(storage, upload) == b""
    await storage.delete(upload)
    await storage.delete(upload)


async def test_concatenation_when_the_backend_declares_it(storage: Storage) -> None:
    if "concatenation" not in storage.capabilities:
        pytest.skip("this backend does not offer concatenation")
    parts = []
    for text in (b"abc", b"de"):
        part = new_upload(len(text), concat="partial")
        await storage.create(part)
        await write(storage, part, text)
        parts.append(replace(part, offset=len(text)))
    final = new_upload(5, offset=5)
    await storage.concatenate(final, parts)
    assert await stored(storage, final) == b"abcde"


async def test_room_is_known_or_unlimited(storage: Storage) -> None:
    room = await storage.room()
    assert room is None or room > 0
