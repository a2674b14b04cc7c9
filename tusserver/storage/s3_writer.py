"""One request's bytes into an S3 multipart upload (`S3Writer`), through a bounded spool file.

The upload's committed state (`Upload.storage`) names the multipart upload, the fixed part size, the
ETags of parts 1..n and the tail object holding the bytes past the last full part. A writer starts at
the committed offset `n * part_size + len(tail)`: the first time it has bytes to store, it copies the
tail into a temporary spool file, then appends what arrives. Each time the spool holds a full part it
goes out as part n+1 (a part number above the committed ones: what a crashed writer left under it
is overwritten), and the spool starts over; the spool never holds more than one part. `flush` stores
what does not fill a part as a new tail object (written before the old one is deleted, which happens
only once a commit no longer names it: `S3Storage.committed`).

`stored` only moves when S3 confirmed a part or a tail, so nothing is committed that S3 did not take.
Spool writes and the checksum run in the storage's threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

from tusserver.core import Hasher, Upload, WriteResult
from tusserver.errors import StorageFull, TusError, UploadDataLost
from tusserver.storage.s3_client import MAX_PARTS, call

if TYPE_CHECKING:
    from tusserver.storage.s3 import S3Storage

BLOCK_SIZE = 512 * 1024
"""Bytes gathered before one spool write (one thread hop)."""
T = TypeVar("T")


class Spool:
    """A temporary file of at most one part, written and read in the storage's threads."""

    def __init__(self, storage: S3Storage) -> None:
        self._storage = storage
        self._file: IO[bytes] | None = None
        self.size = 0

    async def _run(self, function: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._storage.pool, function, *args)

    async def file(self) -> IO[bytes]:
        if self._file is None:
            self._file = await self._run(_temporary, self._storage.spool_dir)
        return self._file

    async def append(self, blocks: list[bytes], hasher: Hasher | None) -> None:
        file = await self.file()
        await self._run(_append, file, blocks, hasher)
        self.size += sum(map(len, blocks))

    async def rewound(self) -> IO[bytes]:
        """The file at its start, for a request body that reads `size` bytes."""
        file = await self.file()
        await self._run(file.seek, 0)
        return file

    async def clear(self) -> None:
        if self._file is not None:
            await self._run(_truncate, self._file)
        self.size = 0

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _temporary(directory: Path) -> IO[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    return tempfile.TemporaryFile(dir=directory)


def _append(file: IO[bytes], blocks: list[bytes], hasher: Hasher | None) -> None:
    file.seek(0, 2)
    for block in blocks:
        if hasher is not None:
            hasher.update(block)
        file.write(block)
    file.flush()


def _truncate(file: IO[bytes]) -> None:
    file.seek(0)
    file.truncate()


class S3Writer:
    """Appends at the committed offset of one upload; see the module docstring."""

    def __init__(self, storage: S3Storage, upload: Upload, hasher: Hasher | None) -> None:
        self._storage = storage
        self._hasher = hasher
        state = upload.storage
        self._upload_id = upload.id
        self._key = state.get("key") or storage.location.key(upload.id)
        self._multipart = state.get("multipart", "")
        self._part_size = int(state.get("part_size") or storage.part_size)
        self._etags = [tag for tag in state.get("parts", "").split(",") if tag]
        self._tail = state.get("tail", "")
        self._start = upload.offset
        self._base = len(self._etags) * self._part_size
        """Where the spool begins: the end of the last full part."""
        self._spool = Spool(storage)
        self._loaded = False
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._stored_end = upload.offset
        self._failure: TusError | None = None

    async def write(self, chunk: bytes) -> None:
        if self._failure is not None:
            raise self._failure
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= BLOCK_SIZE or self._spool.size + self._pending_size >= self._part_size:
            await self._guarded(self._spool_pending())

    async def flush(self) -> WriteResult:
        if self._failure is not None:
            raise self._failure
        await self._guarded(self._store_all())
        return self.result()

    async def close(self) -> WriteResult:
        try:
            return await self.flush()
        finally:
            self._spool.close()

    async def abort(self) -> WriteResult:
        self._pending, self._pending_size = [], 0
        self._spool.close()
        return self.result()

    def result(self) -> WriteResult:
        return WriteResult(
            self._stored_end - self._start, {"parts": ",".join(self._etags), "tail": self._tail}
        )

    async def _guarded(self, work: Any) -> None:
        try:
            await work
        except TusError as problem:
            self._failure = problem
            raise

    async def _store_all(self) -> None:
        await self._spool_pending()
        if self._base + self._spool.size > self._stored_end:
            await self._put_tail()

    async def _spool_pending(self) -> None:
        """Move held-back chunks into the spool, sending each part as soon as it is full."""
        if not self._pending:
            return
        await self._load_tail()
        pending, self._pending, self._pending_size = self._pending, [], 0
        while pending:
            room = self._part_size - self._spool.size
            batch: list[bytes] = []
            taken = 0
            while pending and taken < room:
                chunk = pending[0]
                if taken + len(chunk) <= room:
                    batch.append(pending.pop(0))
                    taken += len(chunk)
                else:
                    cut = room - taken
                    batch.append(chunk[:cut])
                    pending[0] = chunk[cut:]
                    taken = room
            await self._spool.append(batch, self._hasher)
            if self._spool.size == self._part_size:
                await self._put_part()

    async def _load_tail(self) -> None:
        """Put the committed tail at the start of the spool (once, before the first new byte)."""
        if self._loaded:
            return
        self._loaded = True
        expected = self._start - self._base
        if not self._tail:
            if expected:
                raise UploadDataLost("the upload's tail object is not recorded")
            return
        client = await self._storage.client.get()
        response = await call(
            "reading the tail", client.get_object(Bucket=self._storage.location.bucket, Key=self._tail)
        )
        async with response["Body"] as body:
            while True:
                block = await call("reading the tail", body.read(1024 * 1024))
                if not block:
                    break
                await self._spool.append([block], None)
        if self._spool.size != expected:
            raise UploadDataLost(f"the tail object holds {self._spool.size} bytes, not {expected}")

    async def _put_part(self) -> None:
        number = len(self._etags) + 1
        if number > MAX_PARTS:
            raise StorageFull("the upload reached S3's limit of 10,000 parts")
        client = await self._storage.client.get()
        body = await self._spool.rewound()
        answer = await call(
            "uploading a part",
            client.upload_part(
                Bucket=self._storage.location.bucket,
                Key=self._key,
                UploadId=self._multipart,
                PartNumber=number,
                Body=body,
                ContentLength=self._spool.size,
            ),
        )
        self._etags.append(str(answer["ETag"]))
        self._base += self._part_size
        self._stored_end = self._base
        self._tail = ""  # its bytes are in the part now; the committed one goes once a commit says so
        await self._spool.clear()

    async def _put_tail(self) -> None:
        key = self._storage.location.tail_key(self._upload_id)
        client = await self._storage.client.get()
        body = await self._spool.rewound()
        await call(
            "storing the tail",
            client.put_object(
                Bucket=self._storage.location.bucket, Key=key, Body=body, ContentLength=self._spool.size
            ),
        )
        self._tail = key
        self._stored_end = self._base + self._spool.size
