"""The `Storage` contract (tusserver/core.py), run against every backend: what the write pipeline and
the upload service rely on. A new backend joins by adding itself to `BACKENDS`.

As in the pipeline, the backend state a write reports (`WriteResult.storage`) is committed with the
offset (`commit`); reads are of finished uploads, as the server only serves those."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from tusserver.core import Storage, Upload, WriteResult, new_upload_id, utcnow
from tusserver.errors import UploadDataLost
from tusserver.storage import LocalStorage, local
from tusserver.storage.s3 import S3Storage
from tusserver.storage.s3_client import MiB, S3Client, S3Location

pytestmark = pytest.mark.anyio


def s3_storage(root: Path, request: pytest.FixtureRequest) -> Storage:
    """A bucket of the session's moto server, under a prefix, with 5 MiB parts."""
    bucket: str = request.getfixturevalue("s3_bucket")
    client = S3Client(request.getfixturevalue("s3_server").url, "us-east-1")
    return S3Storage(S3Location(bucket, "tus/"), client, root / "spool", part_size=5 * MiB)


BACKENDS: dict[str, Callable[[Path, pytest.FixtureRequest], Storage]] = {
    "local": lambda root, _: LocalStorage(root / "uploads", min_free_space="0"),
    # blocks written by the storage threads (as after a slow block, or with a checksum): the other
    # half of the local writer
    "local-threaded": lambda root, _: LocalStorage(root / "uploads", min_free_space="0", inline_writes=False),
    "local-fsync": lambda root, _: LocalStorage(root / "uploads", fsync=True, min_free_space="0"),
    "s3": s3_storage,
}


@pytest.fixture(params=sorted(BACKENDS))
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    backend = BACKENDS[request.param](tmp_path, request)
    yield backend
    await backend.aclose()


def new_upload(length: int | None, offset: int = 0, concat: str | None = None) -> Upload:
    now = utcnow()
    return Upload(
        id=new_upload_id(), offset=offset, length=length, concat=concat, created_at=now, updated_at=now
    )


async def stored(storage: Storage, upload: Upload) -> bytes:
    return b"".join([block async for block in await storage.read(upload)])


async def created(storage: Storage, length: int | None, concat: str | None = None) -> Upload:
    upload = new_upload(length, concat=concat)
    return replace(upload, storage=await storage.create(upload))


def commit(storage: Storage, upload: Upload, result: WriteResult) -> Upload:
    """What the pipeline's compare-and-set does with a write's result."""
    after = replace(
        upload, offset=upload.offset + result.written, storage={**upload.storage, **result.storage}
    )
    storage.committed(upload, after)
    return after


async def write(storage: Storage, upload: Upload, *chunks: bytes) -> Upload:
    """Write `chunks` at the upload's offset; the upload as committed after it."""
    writer = storage.writer(upload)
    for chunk in chunks:
        await writer.write(chunk)
    return commit(storage, upload, await writer.close())


async def write_uncommitted(storage: Storage, upload: Upload, *chunks: bytes) -> None:
    """A write whose commit never happens (its process died before it)."""
    writer = storage.writer(upload)
    for chunk in chunks:
        await writer.write(chunk)
    await writer.close()


async def finished(storage: Storage, upload: Upload) -> bytes:
    """Finish a complete upload and read it whole."""
    assert upload.is_complete
    await storage.finish(upload)
    return await stored(storage, upload)


async def test_writes_append_at_the_offset_and_report_what_they_stored(storage: Storage) -> None:
    upload = await created(storage, 10)
    upload = await write(storage, upload, b"012", b"34")
    assert upload.offset == 5
    upload = await write(storage, upload, b"56789")
    assert upload.offset == 10
    assert await finished(storage, upload) == b"0123456789"


async def test_bytes_past_the_offset_are_debris_that_the_next_write_replaces(storage: Storage) -> None:
    upload = await write(storage, await created(storage, 6), b"ab")
    await write_uncommitted(storage, upload, b"cdefgh")
    done = await write(storage, upload, b"CDEF")
    assert await finished(storage, done) == b"abCDEF"


async def test_parts_past_the_offset_are_overwritten_under_the_same_number(storage: Storage) -> None:
    """A writer killed after it stored a whole part (S3) but before the commit: the next writer
    starts at the committed offset and its bytes win."""
    size = 12 * MiB
    first, second = b"a" * MiB, bytes(range(256)) * (size // 256)
    upload = await write(storage, await created(storage, size), first)
    await write_uncommitted(storage, upload, b"x" * (7 * MiB))
    done = await write(storage, upload, second[MiB:])
    assert done.offset == size
    assert (
        hashlib.sha256(await finished(storage, done)).digest()
        == hashlib.sha256(first + second[MiB:]).digest()
    )


async def test_a_writer_feeds_the_checksum_with_every_byte_it_stores(storage: Storage) -> None:
    upload = await created(storage, None)
    hasher = hashlib.sha256()
    writer = storage.writer(upload, hasher)
    chunks = [bytes([n]) * 70_000 for n in range(40)]  # several blocks' worth
    for chunk in chunks:
        await writer.write(chunk)
    assert (await writer.close()).written == sum(map(len, chunks))
    assert hasher.digest() == hashlib.sha256(b"".join(chunks)).digest()


async def test_flush_stores_what_was_given_and_abort_stores_nothing_more(storage: Storage) -> None:
    upload = await created(storage, None)
    writer = storage.writer(upload)
    await writer.write(b"kept")
    flushed = await writer.flush()
    assert flushed.written == 4
    await writer.write(b"x")
    assert (await writer.abort()).written in (4, 5)  # held back bytes may or may not be out
    upload = replace(commit(storage, upload, flushed), length=4)
    assert await finished(storage, upload) == b"kept"


async def test_reads_serve_ranges(storage: Storage) -> None:
    upload = await write(storage, await created(storage, 8), b"01234567")
    assert await finished(storage, upload) == b"01234567"
    assert b"".join([b async for b in await storage.read(upload, 2, 5)]) == b"234"
    assert b"".join([b async for b in await storage.read(upload, 5, 5)]) == b""


async def test_a_vanished_upload_is_reported_as_lost(storage: Storage) -> None:
    upload = await write(storage, await created(storage, 8), b"0123")
    await storage.delete(upload)
    writer = storage.writer(upload)

    async def write_and_close() -> None:  # the error may come from either: backends buffer
        await writer.write(b"4567")
        await writer.close()

    with pytest.raises(UploadDataLost):
        await write_and_close()
    await writer.abort()
    with pytest.raises(UploadDataLost):
        await storage.read(replace(upload, offset=8))


async def test_delete_is_idempotent_and_zero_length_uploads_finish(storage: Storage) -> None:
    upload = await created(storage, 0)
    assert await finished(storage, upload) == b""
    await storage.delete(upload)
    await storage.delete(upload)


async def test_deferred_length_uploads_of_no_bytes_finish_empty(storage: Storage) -> None:
    upload = replace(await created(storage, None), length=0)
    assert await finished(storage, upload) == b""


async def test_finish_is_idempotent(storage: Storage) -> None:
    upload = await write(storage, await created(storage, 3), b"abc")
    await storage.finish(upload)
    assert await finished(storage, upload) == b"abc"


async def test_delete_leaves_nothing_and_orphans_are_found(storage: Storage) -> None:
    upload = await write(storage, await created(storage, 20), b"some")
    kept = await write(storage, await created(storage, 3), b"abc")
    assert await storage.missing([upload.id, kept.id]) == set()
    future = utcnow() + timedelta(hours=1)
    listed = [name async for batch in storage.stored_before(future, 100) for name in batch]
    assert set(listed) == {upload.id, kept.id}
    assert await storage.discard(upload.id)
    assert not await storage.discard(upload.id)
    assert await storage.missing([upload.id, kept.id]) == {upload.id}
    past = utcnow() - timedelta(hours=1)
    assert [name async for batch in storage.stored_before(past, 100) for name in batch] == []


async def test_a_finish_whose_state_is_recorded_is_no_longer_unfinished(storage: Storage) -> None:
    upload = await write(storage, await created(storage, 3), b"abc")
    upload = replace(upload, completed_at=utcnow())
    state = await storage.finish(upload)
    assert not storage.unfinished(replace(upload, storage={**upload.storage, **state}))
    assert not storage.unfinished(replace(upload, offset=2, completed_at=None))  # not complete


async def test_concatenation_when_the_backend_declares_it(storage: Storage) -> None:
    if "concatenation" not in storage.capabilities:
        pytest.skip("this backend does not offer concatenation")
    parts = []
    for text in (b"abc", b"de"):
        part = await write(storage, await created(storage, len(text), concat="partial"), text)
        await storage.finish(part)
        parts.append(part)
    final = new_upload(5, offset=5)
    await storage.concatenate(final, parts)
    assert await stored(storage, final) == b"abcde"


async def test_concatenation_of_large_and_small_partials(storage: Storage) -> None:
    """Partials of 6 MiB (a part of its own), 1 MiB (too small for one) and 5 MiB + 3 bytes."""
    if "concatenation" not in storage.capabilities:
        pytest.skip("this backend does not offer concatenation")
    texts = [b"A" * (6 * MiB), b"B" * MiB, b"C" * (5 * MiB) + b"end"]
    parts = []
    for text in texts:
        part = await write(storage, await created(storage, len(text), concat="partial"), text)
        await storage.finish(part)
        parts.append(part)
    total = sum(map(len, texts))
    final = new_upload(total, offset=total)
    await storage.concatenate(final, parts)
    assert await stored(storage, final) == b"".join(texts)


async def test_room_is_known_or_unlimited(storage: Storage) -> None:
    room = await storage.room()
    assert room is None or room > 0


async def test_a_slow_inline_block_sends_the_next_ones_to_the_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The event loop is held for at most one slow block: after it, blocks go to the threads. Real
    dirty-page throttling cannot be summoned on demand here, so the kernel's answer to "did the write
    wait?" is replaced (`kernel_waits` itself is tested below)."""
    storage = LocalStorage(tmp_path / "uploads", min_free_space="0")
    try:
        assert storage.writes_inline()
        monkeypatch.setattr(local, "INLINE_STALL", 0.0)  # every block is "slow"
        waits = itertools.count()
        monkeypatch.setattr(local, "kernel_waits", lambda: next(waits))  # ...and waited in the kernel
        caplog.set_level(logging.INFO, logger=local.__name__)
        upload = await created(storage, 3 * local.BLOCK_SIZE)
        data = os.urandom(3 * local.BLOCK_SIZE)
        upload = await write(storage, upload, data[: local.BLOCK_SIZE], data[local.BLOCK_SIZE :])
        assert not storage.writes_inline()
        assert "storage_writes_threaded" in caplog.text
        assert await finished(storage, upload) == data
    finally:
        await storage.aclose()


async def test_a_block_slow_only_on_the_cpu_stays_inline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow block that never waited in the kernel (page faults on fresh memory, preemption) keeps
    the writes on the event loop: threads would only add their round trips."""
    storage = LocalStorage(tmp_path / "uploads", min_free_space="0")
    try:
        monkeypatch.setattr(local, "INLINE_STALL", 0.0)  # every block is "slow"
        monkeypatch.setattr(local, "kernel_waits", lambda: 7)  # ...and none waited
        upload = await created(storage, 3 * local.BLOCK_SIZE)
        data = os.urandom(3 * local.BLOCK_SIZE)
        upload = await write(storage, upload, data[: local.BLOCK_SIZE], data[local.BLOCK_SIZE :])
        assert storage.writes_inline()
        assert await finished(storage, upload) == data
    finally:
        await storage.aclose()


def test_kernel_waits_counts_the_threads_sleeps() -> None:
    """A sleep is a wait in the kernel: a voluntary context switch of the calling thread."""
    before = local.kernel_waits()
    time.sleep(0.01)
    assert local.kernel_waits() > before
