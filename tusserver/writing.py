"""The write path's pieces around storage: stream guards, checksum verification, progress
checkpoints, and the answer an interrupted request gets.

`guarded` stops a body the moment its lease is lost; `hashed` feeds a checksum while bytes stream;
`Progress` commits the offset now and then during a long body (crash safety); `verify` decides whether
a checksummed body may count. The state rules that use them live in `uploads.py`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import replace

from tusserver.core import Upload, utcnow
from tusserver.errors import (
    BadRequest,
    ChecksumMismatch,
    OffsetMismatch,
    ServiceUnavailable,
    TooLarge,
    TusError,
)
from tusserver.locking import Lease
from tusserver.policy import Policy
from tusserver.protocol import UPLOAD_OFFSET, Checksum
from tusserver.store import SqlUploadStore


class Progress:
    """A `Checkpoint` that commits the offset every `every` seconds while a long body streams, so a
    crash loses at most that much of what was received (None: never, until the end)."""

    def __init__(
        self, store: SqlUploadStore, policy: Policy, lease: Lease, upload: Upload, every: float | None
    ) -> None:
        self._store = store
        self._policy = policy
        self._lease = lease
        self._upload = upload
        self._every = every
        self._next = time.monotonic() + (every or 0)
        self.committed = upload.offset

    def due(self) -> bool:
        return self._every is not None and time.monotonic() >= self._next

    async def reached(self, written: int) -> None:
        self._next = time.monotonic() + (self._every or 0)
        now = utcnow()
        upload = replace(self._upload, offset=self._upload.offset + written, updated_at=now)
        if upload.is_complete:
            return  # finishing belongs to the final commit
        upload = replace(upload, expires_at=self._policy.expires_at(upload, now))
        self._lease.check()
        if await self._store.commit(upload, self._lease.owner, self.committed, release=False) is None:
            self._lease.lost = True
            self._lease.check()
        self.committed = upload.offset


def verify(checksum: Checksum, hasher: hashlib._Hash, disconnected: bool, exceeded: bool) -> None:
    """A checksummed body counts only if it arrived whole and matches (K-5, K-6)."""
    if exceeded:
        raise TooLarge("body exceeds the upload's length; nothing was stored")
    if disconnected:
        raise BadRequest("body incomplete; with Upload-Checksum nothing was stored")
    if hasher.digest() != checksum.digest:
        raise ChecksumMismatch(f"{checksum.algorithm} checksum mismatch; nothing was stored")


def interrupted(lease: Lease, upload: Upload) -> TusError:
    offset = {UPLOAD_OFFSET: str(upload.offset)}
    if lease.shutting_down:
        message = f"server shutting down; {upload.offset} bytes are stored, resume elsewhere"
        return ServiceUnavailable(message, {**offset, "Retry-After": "1"})
    return OffsetMismatch(f"another request took over this upload; resume at {upload.offset}", offset)


async def guarded(chunks: AsyncIterable[bytes], lease: Lease) -> AsyncIterator[bytes]:
    """Stop the stream as soon as the lease is lost, before another byte reaches storage."""
    async for chunk in chunks:
        lease.check()
        yield chunk


async def hashed(chunks: AsyncIterator[bytes], hasher: hashlib._Hash) -> AsyncIterator[bytes]:
    """Feed the checksum while the body streams: no chunk is held back for it."""
    async for chunk in chunks:
        hasher.update(chunk)
        yield chunk
