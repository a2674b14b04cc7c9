"""Upload bytes as files in one local directory.

Layout: `<directory>/<upload_id>`, one file per upload, created empty at creation and truncated to
`Upload-Length` when complete. Files are written at the committed offset; anything beyond it is debris
from an aborted request and is overwritten by the next write. Upload IDs are checked against the ID
pattern before any path is built, so no request can name a file outside the directory. File I/O runs
in worker threads (aiofiles), one hop per coalesced MiB, never on the event loop. With `fsync`, data
is flushed to disk before an offset that covers it is committed (slower; needed to survive power loss,
not process crashes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from pathlib import Path

import aiofiles
import aiofiles.os
from aiofiles.threadpool.binary import AsyncBufferedIOBase, AsyncBufferedReader

from tusserver.bodies import coalesce
from tusserver.core import Checkpoint, Upload, is_upload_id

READ_SIZE = 1024 * 1024


class LocalStorage:
    """Storage in a directory of the local file system (or a shared mount such as NFS)."""

    def __init__(self, directory: Path, fsync: bool = False) -> None:
        self.fsync = fsync
        self.directory = directory.resolve()
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, upload: Upload) -> Path:
        if not is_upload_id(upload.id):  # defence in depth: handlers reject such IDs first
            raise ValueError(f"not an upload id: {upload.id!r}")
        return self.directory / upload.id

    async def create(self, upload: Upload) -> Mapping[str, str]:
        async with aiofiles.open(self.path(upload), "wb"):
            pass
        return {}

    async def write(
        self, upload: Upload, chunks: AsyncIterable[bytes], checkpoint: Checkpoint | None = None
    ) -> int:
        written = 0
        # At offset 0 everything on disk is debris: start the file afresh.
        opening = (
            aiofiles.open(self.path(upload), "r+b")
            if upload.offset
            else aiofiles.open(self.path(upload), "wb")
        )
        async with opening as file:
            await file.seek(upload.offset)
            async for block in coalesce(chunks):
                await file.write(block)
                written += len(block)
                if checkpoint is not None and checkpoint.due():
                    await self._sync(file)
                    await checkpoint.reached(written)
            await self._sync(file)
        return written

    async def _sync(self, file: AsyncBufferedIOBase | AsyncBufferedReader) -> None:
        """With `fsync`, bytes reach the disk before any offset that covers them is committed."""
        if self.fsync:
            await file.flush()
            await asyncio.to_thread(os.fsync, file.fileno())

    async def concatenate(self, upload: Upload, parts: Sequence[Upload]) -> None:
        sources = [(self.path(part), part.offset) for part in parts]
        await asyncio.to_thread(_copy_into, self.path(upload), sources)

    async def finish(self, upload: Upload) -> None:
        if upload.length is not None:
            await asyncio.to_thread(os.truncate, self.path(upload), upload.length)

    async def read(self, upload: Upload, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        stop = upload.offset if end is None else min(end, upload.offset)
        async with aiofiles.open(self.path(upload), "rb") as file:
            await file.seek(start)
            position = start
            while position < stop:
                block = await file.read(min(READ_SIZE, stop - position))
                if not block:
                    return
                position += len(block)
                yield block

    async def delete(self, upload: Upload) -> None:
        with contextlib.suppress(FileNotFoundError):
            await aiofiles.os.remove(self.path(upload))

    def describe(self, upload: Upload) -> Mapping[str, str]:
        return {"type": "local", "path": str(self.path(upload))}


def _copy_into(target: Path, sources: Sequence[tuple[Path, int]]) -> None:
    """Write the first `count` bytes of each source file, in order, into `target` (in the kernel where
    it can: copy_file_range, without bringing the bytes into this process)."""
    with target.open("wb") as sink:
        for source, count in sources:
            with source.open("rb") as origin:
                remaining = count
                while remaining:
                    copied = os.copy_file_range(origin.fileno(), sink.fileno(), min(remaining, 1 << 30))
                    if copied == 0:
                        raise FileNotFoundError(f"{source} is shorter than its committed offset")
                    remaining -= copied
