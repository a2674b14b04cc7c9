"""Upload bytes as files in one local directory.

Layout: `<directory>/<upload_id>`, one file per upload, made by the first byte written (a new upload
without a byte has no file, so a POST costs no storage call) and truncated to `Upload-Length` when
complete. Files are written at the committed offset; anything beyond it is debris
from an aborted request and is overwritten by the next write. Upload IDs are checked against the ID
pattern before any path is built, so no request can name a file outside the directory.

Writing (`LocalWriter`): chunks are gathered into 512 KiB blocks and each block goes out with one
`os.pwritev` (no copy into a joined buffer). A block is written on the event loop itself while the
page cache takes blocks at memory speed (a block costs ~0.1 ms there; a thread round trip costs more,
and on a 2-core machine the extra thread competes with everything else: inline writes gave about a
fifth more throughput with 8 MiB PATCHes). Once a block takes longer than `INLINE_STALL` and the
kernel made the write wait (a voluntary context switch of the loop's thread: dirty-page throttling, a
slow disk), blocks go to a bounded pool of storage threads for `THREADED_FOR` seconds, while the loop
already receives the next block (double buffering: one block in flight per request), so the loop is
never held for more than one slow block. A block that was only slow on the CPU (page faults on fresh
memory, the thread preempted) stays inline: threads would not make that faster, and measured back to
back they cost a fifth of a 1 GiB PATCH's throughput. Blocks that are hashed (a checksum) and every
fsync always go to the threads (hashlib releases the GIL). The file is opened by the first block and
closed by the last, so a PATCH costs no storage call beyond its blocks. Before each block the free
space of the file system is checked against the reserve (`--min-free-space`; a recent reading serves
while far from it), so the database beside the data can always commit and a DELETE can always free
room. OS errors become `StorageFull` (ENOSPC, EDQUOT, EFBIG), `UploadDataLost` (the file vanished
under a committed offset) or `StorageUnavailable` (EIO, EMFILE, ...).

With `fsync`, a block is synced before an offset that covers it is committed, the directory entry is
synced after a file is created, and the truncation at finish and an assembled concatenation are synced:
what a commit acknowledged survives a power loss (given a disk that honours flushes).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import re
import resource
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import aiofiles
import aiofiles.os
from aiofiles.threadpool.binary import AsyncBufferedReader

from tusserver.core import Hasher, Upload, WriteResult, is_upload_id
from tusserver.errors import StorageFull, StorageUnavailable, TusError, UploadDataLost

log = logging.getLogger(__name__)
READ_SIZE = 1024 * 1024
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})
BLOCK_SIZE = 512 * 1024
"""Bytes gathered before one write: one system call (or thread hop) per block, not per ASGI chunk."""
_IOV_MAX = 1024
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_RESERVE = re.compile(r"(?P<number>[0-9]+(?:\.[0-9]+)?)\s*%")
DEFAULT_RESERVE = "auto"
"""1 % of the file system, at least 64 MiB."""
ROOM_FRESHNESS = 0.5
"""Seconds a free-space reading serves the up-front check of new uploads."""
INLINE_STALL = 0.002
"""Seconds: a block written on the event loop that took longer sends the next ones to threads..."""
THREADED_FOR = 5.0
"""... for this long (then inline again)."""
BLOCK_CHECK_FRESHNESS = 0.1
"""Seconds a free-space reading, less what this process wrote since, serves the check of a block..."""
BLOCK_CHECK_SLACK = 256 * 1024 * 1024
"""... while at least this much room is left above the reserve; closer to it, every block reads
the file system's free space again (a statvfs per block cost 5 % of a busy server's CPU). Other
processes writing to the same disk meanwhile (workers, other instances) are not subtracted: in
0.1 s even a fast disk takes less than the slack, so they cannot reach the reserve unseen."""


def reserve_bytes(spec: str, total: int) -> int:
    """`--min-free-space` as bytes for a file system of `total` bytes: `auto`, `N%` or a byte count."""
    text = spec.strip().lower()
    if text == DEFAULT_RESERVE:
        return max(total // 100, 64 * 1024 * 1024)
    match = _RESERVE.fullmatch(text)
    if match:
        return int(total * float(match["number"]) / 100)
    from tusserver.config import parse_byte_size  # a late import: config imports nothing of storage

    return parse_byte_size(text)


def storage_error(exc: OSError, what: str) -> TusError:
    """The one translation of an OS error on the data directory into an answer."""
    if exc.errno in _FULL:
        return StorageFull(f"no room left in storage while {what} ({os.strerror(exc.errno or 0)})")
    if exc.errno == errno.ENOENT:
        return UploadDataLost("the upload's stored bytes are missing")
    name = errno.errorcode.get(exc.errno or 0, "error")
    return StorageUnavailable(f"storage error while {what} ({name}), retry later", {"Retry-After": "5"})


T = TypeVar("T")


class LocalStorage:
    """Storage in a directory of the local file system (or a shared mount such as NFS)."""

    capabilities = frozenset({"concatenation"})

    def __init__(
        self,
        directory: Path,
        fsync: bool = False,
        min_free_space: str = DEFAULT_RESERVE,
        inline_writes: bool = True,
    ) -> None:
        """`inline_writes=False`: every block goes through the storage threads."""
        self.fsync = fsync
        self.inline_writes = inline_writes
        self.directory = directory.resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._prefix = f"{self.directory}{os.sep}"
        stat = os.statvfs(self.directory)
        self.reserve = reserve_bytes(min_free_space, stat.f_blocks * stat.f_frsize)
        self._free_seen = (-ROOM_FRESHNESS, 0)
        self._room_lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tusserver-storage")
        self._threads_until = 0.0
        """Until this `time.monotonic()`, blocks go to the storage threads (a block was slow)."""

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    async def aclose(self) -> None:
        self.close()

    def path(self, upload: Upload) -> Path:
        if not is_upload_id(upload.id):  # defence in depth: handlers reject such IDs first
            raise ValueError(f"not an upload id: {upload.id!r}")
        return self.directory / upload.id

    def file_name(self, upload: Upload) -> str:
        """`path` as text, for the write path (a `pathlib` join costs more than the rest of opening
        a writer)."""
        if not is_upload_id(upload.id):
            raise ValueError(f"not an upload id: {upload.id!r}")
        return self._prefix + upload.id

    def free_bytes(self) -> int:
        """Bytes that may still be written above the reserve (blocking: a quick statvfs)."""
        stat = os.statvfs(self.directory)
        free = stat.f_bavail * stat.f_frsize - self.reserve
        self._free_seen = (time.monotonic(), free)
        return free

    def writes_inline(self) -> bool:
        """Whether a block (without fsync or hashing) is written on the event loop now."""
        return self.inline_writes and time.monotonic() >= self._threads_until

    def took(self, seconds: float, waited: bool) -> None:
        """A block written inline took `seconds`, and the kernel made it wait (`waited`) or not:
        both together mean the page cache is pushing back (dirty-page throttling, a slow disk), and
        blocks go to the threads for a while."""
        if seconds > INLINE_STALL and waited:
            if self.writes_inline():
                log.info("storage_writes_threaded block_ms=%.1f for_s=%g", seconds * 1000, THREADED_FOR)
            self._threads_until = time.monotonic() + THREADED_FOR

    def take_room(self, size: int) -> bool:
        """Before a block (in a storage thread, or on the loop for an inline write): whether `size`
        more bytes fit above the reserve, and if so count them as taken. Far from the reserve a
        recent reading serves; other processes' writes in its short lifetime are covered by
        `BLOCK_CHECK_SLACK`."""
        with self._room_lock:
            seen_at, free = self._free_seen
            if time.monotonic() - seen_at > BLOCK_CHECK_FRESHNESS or free - size < BLOCK_CHECK_SLACK:
                self.free_bytes()
                seen_at, free = self._free_seen
            if free < size:
                return False
            self._free_seen = (seen_at, free - size)
            return True

    async def room(self) -> int | None:
        """For a creation's up-front check: the free space seen at most `ROOM_FRESHNESS` seconds ago
        (every block written refreshes it; a statvfs per POST cost 8 % of a small request)."""
        seen_at, free = self._free_seen
        if time.monotonic() - seen_at > ROOM_FRESHNESS:
            free = self.free_bytes()
        return max(free, 0)

    async def _run(self, what: str, function: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.pool, function, *args)
        except OSError as exc:
            raise storage_error(exc, what) from exc

    async def create(self, upload: Upload) -> Mapping[str, str]:
        """Nothing to do: the file is made by the first block written at offset 0 (or by `finish`
        or `concatenate`). A POST costs no storage call (no thread round trip, no empty file), and a
        row at offset 0 without a file is a valid upload that holds no byte yet."""
        return {}

    def sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def writer(self, upload: Upload, hasher: Hasher | None = None) -> LocalWriter:
        return LocalWriter(self, upload, hasher)

    async def concatenate(self, upload: Upload, parts: Sequence[Upload]) -> None:
        sources = [(self.path(part), part.offset) for part in parts]
        try:
            await self._run("assembling the upload", self._assemble, self.path(upload), sources)
        except UploadDataLost:  # a partial was deleted while we read it
            await self.delete(upload)
            raise

    def _assemble(self, target: Path, sources: Sequence[tuple[Path, int]]) -> None:
        _copy_into(target, sources)
        if self.fsync:
            fd = os.open(target, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self.sync_directory()

    def committed(self, before: Upload, after: Upload) -> None:
        return None  # a file holds every committed byte in place: nothing is superseded

    async def finish(self, upload: Upload) -> Mapping[str, str]:
        if upload.length is not None:
            await self._run("finishing the upload", self._truncate, self.path(upload), upload.length)
        return {}

    def unfinished(self, upload: Upload) -> bool:
        return False  # the file holds the bytes whether or not the truncation came

    def _truncate(self, path: Path, length: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)  # a zero-length upload may have no file
        try:
            os.ftruncate(fd, length)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    async def read(self, upload: Upload, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        stop = upload.offset if end is None else min(end, upload.offset)
        if upload.offset == 0:  # no byte yet: there may be no file either
            return _nothing()
        try:  # opened now: the open file stays readable whatever a DELETE does meanwhile
            file = await aiofiles.open(self.path(upload), "rb")
        except OSError as exc:
            raise storage_error(exc, "reading") from exc
        return _blocks(file, start, stop)

    async def delete(self, upload: Upload) -> None:
        await self.discard(upload.id)

    async def stored_before(self, cutoff: datetime, batch: int) -> AsyncIterator[list[str]]:
        names = await self._run("listing uploads", self._names_before, cutoff.timestamp())
        for start in range(0, len(names), batch):
            yield names[start : start + batch]

    def _names_before(self, cutoff: float) -> list[str]:
        found = []
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if not is_upload_id(entry.name):
                    continue
                with contextlib.suppress(FileNotFoundError):  # deleted while we looked
                    if entry.stat().st_mtime < cutoff:
                        found.append(entry.name)
        return found

    async def pending_before(self, cutoff: datetime, batch: int) -> AsyncIterator[list[str]]:
        return  # a file is never left half-finished
        yield []

    async def missing(self, upload_ids: Sequence[str]) -> set[str]:
        paths = [(name, self.directory / name) for name in upload_ids if is_upload_id(name)]
        return await self._run("looking for uploads", _absent, paths)

    async def discard(self, upload_id: str) -> bool:
        if not is_upload_id(upload_id):
            raise ValueError(f"not an upload id: {upload_id!r}")
        try:
            await aiofiles.os.remove(self.directory / upload_id)
        except FileNotFoundError:
            return False
        return True

    def describe(self, upload: Upload) -> Mapping[str, str]:
        return {"type": "local", "path": self.file_name(upload)}


class LocalWriter:
    """One request's bytes into one file: 512 KiB `pwritev` blocks, written on the event loop or
    (see `LocalStorage.writes_inline`) one in flight in a storage thread while the next gathers.
    `stored` only counts bytes the kernel accepted (and synced, with fsync)."""

    def __init__(self, storage: LocalStorage, upload: Upload, hasher: Hasher | None) -> None:
        self._storage = storage
        self._path = storage.file_name(upload)
        self._start = upload.offset
        self._hasher = hasher
        # Never O_TRUNC: ext4 flushes a file truncated to zero and rewritten when it is closed
        # (auto_da_alloc), which cost a third of a 1 GiB PATCH; debris beyond the offset is harmless.
        # At offset 0 a file that went missing holds nothing yet and is made again; beyond, it is lost.
        # At offset 0 the file is made here (`LocalStorage.create` makes none); with fsync its
        # directory entry is synced with the first block.
        self._open_flags = os.O_WRONLY | (os.O_CREAT if upload.offset == 0 else 0)
        self._sync_new_entry = storage.fsync and upload.offset == 0
        self._fd = -1
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._submitted = 0
        self._in_flight: asyncio.Future[None] | None = None
        self._failure: TusError | None = None
        self._written = 0
        self.stored = 0

    async def write(self, chunk: bytes) -> None:
        self._pending.append(chunk)
        self._pending_size += len(chunk)
        if self._pending_size >= BLOCK_SIZE:
            await self._submit(sync=False, close=False)

    async def flush(self) -> WriteResult:
        await self._submit(sync=self._storage.fsync, close=False)
        await self._settle()
        return self.result()

    async def close(self) -> WriteResult:
        try:
            await self._submit(sync=self._storage.fsync, close=True)
            await self._settle()
        finally:
            self._close_now()
        return self.result()

    async def abort(self) -> WriteResult:
        self._pending, self._pending_size = [], 0
        with contextlib.suppress(TusError):
            await self._settle()
        self._close_now()
        return self.result()

    def _close_now(self) -> None:
        """After an error (or an abort) the file may still be open: closing it is quick."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def result(self) -> WriteResult:
        return WriteResult(self.stored)

    async def _submit(self, sync: bool, close: bool) -> None:
        await self._settle()
        batch, size = self._pending, self._pending_size
        self._pending, self._pending_size = [], 0
        if not batch and not (self._fd >= 0 and (sync or close)):
            return
        position = self._start + self._submitted
        self._submitted += size
        if self._hasher is None and not sync and self._storage.writes_inline():
            started, waits = time.monotonic(), kernel_waits()
            try:
                self._write_block(batch, size, position, sync, close)
            except OSError as exc:
                self._failure = storage_error(exc, "writing")  # raised by the next `_settle`
            self._storage.took(time.monotonic() - started, kernel_waits() != waits)
            return
        loop = asyncio.get_running_loop()
        self._in_flight = loop.run_in_executor(
            self._storage.pool, self._write_block, batch, size, position, sync, close
        )

    async def _settle(self) -> None:
        """Wait for the block in flight; re-raise a failure once it happened."""
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            try:
                await in_flight
            except OSError as exc:
                self._failure = storage_error(exc, "writing")
        if self._failure is not None:
            raise self._failure

    def _write_block(self, batch: list[bytes], size: int, position: int, sync: bool, close: bool) -> None:
        """In a storage thread: open on first use, check the reserve, hash, write, sync, close."""
        if self._fd < 0:
            self._fd = os.open(self._path, self._open_flags, 0o644)
            if self._sync_new_entry:
                self._storage.sync_directory()
                self._sync_new_entry = False
        if size:
            if not self._storage.take_room(size):
                raise OSError(errno.ENOSPC, "the free space reserve is reached")
            if self._hasher is not None:
                for chunk in batch:
                    self._hasher.update(chunk)
            self._pwrite_all(batch, position)
        if sync:
            os.fsync(self._fd)
            self.stored = self._written
        if close:
            os.close(self._fd)
            self._fd = -1

    def _pwrite_all(self, buffers: list[bytes], position: int) -> None:
        """Write every buffer at `position` on, in order, counting each byte the kernel takes (so a
        write that fails half way still tells what reached the file)."""
        views = [memoryview(buffer) for buffer in buffers]
        while views:
            written = os.pwritev(self._fd, views[:_IOV_MAX], position)
            position += written
            self._written += written
            if not self._storage.fsync:
                self.stored = self._written
            while views and written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            if written:
                views[0] = views[0][written:]


_RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", None)
_guesses = itertools.count()


def kernel_waits() -> int:
    """How often the calling thread has waited in the kernel (voluntary context switches: I/O,
    dirty-page throttling, locks); where the system cannot tell, a new number each call (so every
    slow block counts as one that waited)."""
    if _RUSAGE_THREAD is None:
        return next(_guesses)
    return resource.getrusage(_RUSAGE_THREAD).ru_nvcsw


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""


def _absent(paths: Sequence[tuple[str, Path]]) -> set[str]:
    return {upload_id for upload_id, path in paths if not path.exists()}


async def _blocks(file: AsyncBufferedReader, start: int, stop: int) -> AsyncIterator[bytes]:
    try:
        await file.seek(start)
        position = start
        while position < stop:
            block = await file.read(min(READ_SIZE, stop - position))
            if not block:
                return
            position += len(block)
            yield block
    finally:
        await file.close()


def _copy_into(target: Path, sources: Sequence[tuple[Path, int]]) -> None:
    """Write the first `count` bytes of each source file, in order, into `target`: in the kernel where
    it can (copy_file_range, without bringing the bytes into this process), by plain reads and writes
    where the file system or kernel cannot (EXDEV, EINVAL, ENOSYS, EOPNOTSUPP)."""
    sink = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        in_kernel = True
        for source, count in sources:
            origin = os.open(source, os.O_RDONLY)
            try:
                in_kernel = _copy_range(origin, sink, count, in_kernel)
            finally:
                os.close(origin)
    finally:
        os.close(sink)


def _copy_range(origin: int, sink: int, count: int, in_kernel: bool) -> bool:
    """Copy `count` bytes from the current position of `origin` to `sink`; returns whether the kernel
    copy still works (a fallback, once needed, is kept for the remaining sources)."""
    remaining = count
    while remaining:
        if in_kernel:
            try:
                copied = os.copy_file_range(origin, sink, min(remaining, 1 << 30))
            except OSError as exc:
                if exc.errno not in _NO_KERNEL_COPY:
                    raise
                in_kernel = False
                continue
        else:
            block = os.read(origin, min(remaining, READ_SIZE))
            copied = len(block)
            view = memoryview(block)
            while view:
                view = view[os.write(sink, view) :]
        if copied == 0:
            raise FileNotFoundError(errno.ENOENT, "a partial upload is shorter than its committed offset")
        remaining -= copied
    return in_kernel
