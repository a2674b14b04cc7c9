"""`UploadService`: the one home of upload-state rules.

Creation, appending, length declaration and termination, each under the upload's lease. The order of
checks follows PROTOCOL.md §1.3 (404 -> 403 final -> 409 offset -> completed -> length -> 413 -> body).
Bytes stream to storage with no database transaction open; the offset moves only by a compare-and-set
commit afterwards, so the database offset is the single source of truth and anything stored beyond it
is debris that the next write replaces.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, replace

from tusserver.bodies import LimitedBody
from tusserver.core import FinishEvent, Storage, Upload, new_upload_id, utcnow
from tusserver.errors import BadRequest, Forbidden, OffsetMismatch, TooLarge, UploadLocked
from tusserver.hooks import HookRunner
from tusserver.locking import Lease, UploadLocks
from tusserver.protocol import UPLOAD_OFFSET, metadata_text
from tusserver.store import SqlUploadStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewUpload:
    """What a creation request asks for, already parsed."""

    length: int | None
    metadata: str | None = None


@dataclass(frozen=True)
class Body:
    """A request body and what its headers promise about it."""

    chunks: AsyncIterable[bytes]
    content_length: int | None


class UploadService:
    def __init__(
        self,
        store: SqlUploadStore,
        storage: Storage,
        locks: UploadLocks,
        hooks: HookRunner,
        max_size: int | None,
    ) -> None:
        self.store = store
        self.storage = storage
        self.locks = locks
        self.hooks = hooks
        self.max_size = max_size

    async def get(self, upload_id: str) -> Upload:
        return await self.store.get(upload_id)

    async def create(self, request: NewUpload, body: Body | None) -> Upload:
        """Create an upload; with a body, append it at offset 0 (creation-with-upload)."""
        self._check_max_size(request.length)
        now = utcnow()
        upload = Upload(
            id=new_upload_id(),
            offset=0,
            length=request.length,
            metadata=request.metadata,
            created_at=now,
            updated_at=now,
        )
        upload = replace(upload, storage=await self.storage.create(upload))
        if body is None:
            return await self._add_empty(upload)
        lease = Lease(upload, self.locks.new_owner())
        await self.store.add(upload, lease.owner, self.locks.lease_until())
        log.info("upload_created upload_id=%s length=%s", upload.id, upload.length)
        async with self.locks.kept(lease):
            return await self._write(lease, upload, body)

    async def _add_empty(self, upload: Upload) -> Upload:
        if upload.length == 0:  # nothing to wait for: complete at birth (CR-6)
            upload = replace(upload, completed_at=upload.created_at)
            await self.storage.finish(upload)
        await self.store.add(upload, None, None)
        log.info("upload_created upload_id=%s length=%s", upload.id, upload.length)
        if upload.completed_at is not None:
            self._finished(upload)
        return upload

    async def append(self, upload_id: str, offset: int, body: Body, declared_length: int | None) -> Upload:
        """PATCH: append `body` at `offset`, declaring a deferred length if given."""
        async with self.locks.hold(upload_id) as lease:
            upload = lease.upload
            if upload.is_final:
                raise Forbidden("cannot PATCH a final upload of a concatenation")
            if offset != upload.offset:
                raise OffsetMismatch(
                    f"{UPLOAD_OFFSET} {offset} does not match the upload's offset {upload.offset}",
                    {UPLOAD_OFFSET: str(upload.offset)},
                )
            if declared_length is not None:
                upload = self._declare_length(upload, declared_length)
            if upload.completed_at is not None and body.content_length == 0:
                return upload  # an idempotent retry of the last PATCH (C-P11)
            return await self._write(lease, upload, body)

    async def terminate(self, upload_id: str) -> None:
        """DELETE: forget the upload and remove its bytes."""
        async with self.locks.hold(upload_id) as lease:
            if not await self.store.delete(upload_id, lease.owner):
                raise UploadLocked("upload was taken over by another request, retry")
            lease.released = True
            await self.storage.delete(lease.upload)
        log.info("upload_terminated upload_id=%s", upload_id)

    def _check_max_size(self, length: int | None) -> None:
        if length is not None and self.max_size is not None and length > self.max_size:
            raise TooLarge(f"Upload-Length {length} exceeds the maximum of {self.max_size} bytes")

    def _declare_length(self, upload: Upload, length: int) -> Upload:
        """creation-defer-length: set the length once; repeating the same value is harmless (D-5)."""
        if upload.length is not None:
            if length != upload.length:
                raise BadRequest(f"Upload-Length is already {upload.length} and cannot change")
            return upload
        if length < upload.offset:
            raise BadRequest(f"Upload-Length {length} is below the current offset {upload.offset}")
        self._check_max_size(length)
        return replace(upload, length=length)

    def _room(self, upload: Upload) -> int | None:
        """How many more bytes this upload may take (None: no limit)."""
        cap = upload.length if upload.length is not None else self.max_size
        return None if cap is None else cap - upload.offset

    async def _write(self, lease: Lease, upload: Upload, body: Body) -> Upload:
        room = self._room(upload)
        if room is not None and body.content_length is not None and body.content_length > room:
            raise TooLarge(f"body of {body.content_length} bytes exceeds the {room} bytes left")
        limited = LimitedBody(_guarded(body.chunks, lease), room)
        written = await self.storage.write(upload, limited)
        committed = await self._commit(lease, upload, written)
        if limited.exceeded:
            raise TooLarge(f"body exceeds the {room} bytes left; {written} bytes were stored")
        return committed

    async def _commit(self, lease: Lease, upload: Upload, written: int) -> Upload:
        lease.check()
        now = utcnow()
        updated = replace(upload, offset=upload.offset + written, updated_at=now)
        finishing = updated.is_complete and upload.completed_at is None
        if finishing:
            updated = replace(updated, completed_at=now)
            await self.storage.finish(updated)
        committed = await self.store.commit(updated, lease.owner, lease.upload.offset, release=True)
        if committed is None:
            raise UploadLocked("upload was taken over by another request, retry")
        lease.released = True
        if finishing:  # only the request whose commit completed the upload gets here: once
            self._finished(committed)
        return committed

    def _finished(self, upload: Upload) -> None:
        log.info("upload_finished upload_id=%s length=%s", upload.id, upload.length)
        event = FinishEvent(
            upload=upload,
            metadata=metadata_text(upload.metadata),
            storage=self.storage.describe(upload),
        )
        self.hooks.finished(event)


async def _guarded(chunks: AsyncIterable[bytes], lease: Lease) -> AsyncIterator[bytes]:
    """Stop the stream as soon as the lease is lost, before another byte reaches storage."""
    async for chunk in chunks:
        lease.check()
        yield chunk
