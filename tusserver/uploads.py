"""`UploadService`: the one home of upload-state rules.

Creation (plain, partial and final), appending, length declaration, termination and the expiry rule,
each under the upload's lease. The order of checks follows PROTOCOL.md §1.3 (404/410 -> 403 final ->
409 offset -> completed -> length -> 413 -> checksum -> body). Bytes stream to storage with no database
transaction open; the offset moves only by a compare-and-set commit afterwards, so the database offset
is the single source of truth and anything stored beyond it is debris that the next write replaces.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from tusserver.bodies import LimitedBody
from tusserver.core import FinishEvent, Storage, Upload, is_upload_id, new_upload_id, utcnow
from tusserver.errors import (
    BadRequest,
    ChecksumMismatch,
    Forbidden,
    OffsetMismatch,
    TooLarge,
    UploadGone,
    UploadLocked,
    UploadNotFound,
)
from tusserver.hooks import HookRunner
from tusserver.locking import Lease, UploadLocks
from tusserver.policy import Policy
from tusserver.protocol import UPLOAD_OFFSET, Concat, metadata_text, parse_checksum
from tusserver.store import SqlUploadStore
from tusserver.writing import Progress, guarded, hashed, interrupted, verify

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewUpload:
    """What a creation request asks for, already parsed."""

    length: int | None
    metadata: str | None = None
    concat: Concat | None = None


class BodyStream(Protocol):
    """Request bytes; `disconnected` tells, once iteration ended, whether the client went away;
    `interrupt()` ends the iteration early, even while it waits for bytes."""

    disconnected: bool

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    def interrupt(self) -> None: ...


@dataclass(frozen=True)
class Body:
    """A request body and what its headers promise about it."""

    stream: BodyStream
    content_length: int | None
    checksum: str | None = None
    """The raw `Upload-Checksum` header; parsed only once the other checks passed (K-10)."""


class UploadService:
    def __init__(
        self, store: SqlUploadStore, storage: Storage, locks: UploadLocks, hooks: HookRunner, policy: Policy
    ) -> None:
        self.store = store
        self.storage = storage
        self.locks = locks
        self.hooks = hooks
        self.policy = policy

    async def get(self, upload_id: str) -> Upload:
        """The upload as committed; 404 if unknown, 410 if expired (E-7, even before cleanup ran)."""
        return _alive(await self.store.get(upload_id))

    async def status(self, upload_id: str) -> Upload:
        """HEAD: like `get`, but a request still writing is asked to finish first, so the offset
        includes what it received (a client resuming after a dropped connection, L-2, I-16)."""
        return _alive(await self.locks.wait_until_free(upload_id))

    async def create(self, request: NewUpload, body: Body | None) -> Upload:
        """Create an upload; with a body, append it at offset 0 (creation-with-upload)."""
        if request.concat is not None and request.concat.is_final:
            if body is not None:
                raise Forbidden("a final upload cannot carry a body")
            return await self._create_final(request)
        self._check_max_size(request.length)
        now = utcnow()
        upload = Upload(
            id=new_upload_id(),
            offset=0,
            length=request.length,
            metadata=request.metadata,
            concat=request.concat.header if request.concat else None,
            created_at=now,
            updated_at=now,
        )
        upload = replace(upload, expires_at=self.policy.expires_at(upload, now))
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
            upload = replace(upload, expires_at=self.policy.expires_at(upload, upload.created_at))
            await self.storage.finish(upload)
        await self.store.add(upload, None, None)
        log.info("upload_created upload_id=%s length=%s", upload.id, upload.length)
        if upload.completed_at is not None:
            self._finished(upload)
        return upload

    async def _create_final(self, request: NewUpload) -> Upload:
        """concatenation: assemble finished partials, in order, into a new finished upload (§10)."""
        assert request.concat is not None
        if request.length is not None:
            raise BadRequest("a final upload takes its length from its partials: omit Upload-Length")
        parts = [await self._finished_partial(upload_id) for upload_id in request.concat.parts]
        length = sum(part.offset for part in parts)
        self._check_max_size(length)
        now = utcnow()
        upload = Upload(
            id=new_upload_id(),
            offset=length,
            length=length,
            metadata=request.metadata,
            concat=request.concat.header,
            created_at=now,
            updated_at=now,
            completed_at=now,
        )
        upload = replace(upload, expires_at=self.policy.expires_at(upload, now))
        upload = replace(upload, storage=await self.storage.create(upload))
        await self._assemble(upload, parts)
        await self.store.add(upload, None, None)
        log.info("upload_concatenated upload_id=%s parts=%d length=%d", upload.id, len(parts), length)
        self._finished(upload)
        return upload

    async def _finished_partial(self, upload_id: str) -> Upload:
        if not is_upload_id(upload_id):
            raise UploadNotFound(upload_id)
        try:
            part = await self.get(upload_id)
        except UploadNotFound:
            raise UploadNotFound(upload_id) from None
        if not part.is_partial:
            raise BadRequest(f"upload {upload_id} is not a partial upload")
        if not part.is_complete:
            raise BadRequest(f"partial upload {upload_id} is not finished")
        return part

    async def _assemble(self, upload: Upload, parts: Sequence[Upload]) -> None:
        try:
            await self.storage.concatenate(upload, parts)
        except FileNotFoundError:  # a partial was deleted while we read it
            await self.storage.delete(upload)
            raise UploadNotFound() from None

    async def append(self, upload_id: str, offset: int, body: Body, declared_length: int | None) -> Upload:
        """PATCH: append `body` at `offset`, declaring a deferred length if given."""
        async with self.locks.hold(upload_id) as lease:
            upload = _alive(lease.upload)
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
            _alive(lease.upload)
            if not await self.store.delete(upload_id, lease.owner):
                raise UploadLocked("upload was taken over by another request, retry")
            lease.released = True
            await self.storage.delete(lease.upload)
        log.info("upload_terminated upload_id=%s", upload_id)

    def _check_max_size(self, length: int | None) -> None:
        maximum = self.policy.max_size
        if length is not None and maximum is not None and length > maximum:
            raise TooLarge(f"Upload-Length {length} exceeds the maximum of {maximum} bytes")

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
        cap = upload.length if upload.length is not None else self.policy.max_size
        return None if cap is None else cap - upload.offset

    async def _write(self, lease: Lease, upload: Upload, body: Body) -> Upload:
        room = self._room(upload)
        if room is not None and body.content_length is not None and body.content_length > room:
            raise TooLarge(f"body of {body.content_length} bytes exceeds the {room} bytes left")
        checksum = parse_checksum(body.checksum)
        if checksum is not None and checksum.digest is None:
            raise ChecksumMismatch(f"{checksum.algorithm} digest has the wrong length")
        lease.on_stop.append(body.stream.interrupt)
        if lease.stopping:
            body.stream.interrupt()
        stream = guarded(body.stream, lease)
        hasher = checksum.hasher() if checksum else None
        if hasher is not None:
            stream = hashed(stream, hasher)
        limited = LimitedBody(stream, room)
        # With a checksum nothing may count before the whole body is verified (K-6): no checkpoints.
        progress = Progress(
            self.store, self.policy, lease, upload, None if checksum else self.policy.commit_every
        )
        written = await self.storage.write(upload, limited, progress)
        if checksum is not None and hasher is not None:
            verify(checksum, hasher, body.stream.disconnected, limited.exceeded)
        committed = await self._commit(lease, upload, written, progress.committed)
        if limited.exceeded:
            raise TooLarge(f"body exceeds the {room} bytes left; {written} bytes were stored")
        if lease.stopping and not body.stream.disconnected:
            raise interrupted(lease, committed)
        return committed

    async def _commit(self, lease: Lease, upload: Upload, written: int, old_offset: int) -> Upload:
        lease.check()
        now = utcnow()
        updated = replace(upload, offset=upload.offset + written, updated_at=now)
        finishing = updated.is_complete and upload.completed_at is None
        if finishing:
            updated = replace(updated, completed_at=now)
            await self.storage.finish(updated)
        updated = replace(updated, expires_at=self.policy.expires_at(updated, now))  # sliding (E-6)
        committed = await self.store.commit(updated, lease.owner, old_offset, release=True)
        if committed is None:
            raise UploadLocked("upload was taken over by another request, retry")
        lease.released = True
        if finishing:  # only the request whose commit completed the upload gets here: once
            self._finished(committed)
        return committed

    def _finished(self, upload: Upload) -> None:
        log.info("upload_finished upload_id=%s length=%s", upload.id, upload.length)
        if upload.is_partial:
            return  # a piece of a future final upload, not a file anyone asked for
        event = FinishEvent(
            upload=upload,
            metadata=metadata_text(upload.metadata),
            storage=self.storage.describe(upload),
        )
        self.hooks.finished(event)


def _alive(upload: Upload) -> Upload:
    if upload.expires_at is not None and upload.expires_at <= utcnow():
        raise UploadGone("upload expired")
    return upload
