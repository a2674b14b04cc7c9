"""`UploadService`: the upload-state rules outside the byte stream.

Creation (plain, partial and final), status, termination and the expiry rule's use on reads. The byte
stream of a PATCH or of creation-with-upload belongs to `pipeline.WritePipeline`; creation hands it
the body once the row exists. The order of checks follows PROTOCOL.md §1.3.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace

from tusserver import metrics
from tusserver.core import Storage, Upload, is_upload_id, new_upload_id, utcnow, value_class
from tusserver.errors import (
    BadRequest,
    Forbidden,
    StorageFull,
    TooLarge,
    TusError,
    UploadGone,
    UploadIdTaken,
    UploadLocked,
    UploadNotFound,
    UploadStopped,
)
from tusserver.events import EventType, RequestInfo
from tusserver.hooks import HookAnswer, Hooks
from tusserver.locking import LeaseState, UploadLocks
from tusserver.pipeline import Body, WritePipeline, rejection
from tusserver.policy import Policy, is_expired
from tusserver.protocol import Concat, encode_metadata
from tusserver.records import UploadRecords
from tusserver.statements import Step

log = logging.getLogger(__name__)
_REFUSED_BODY = frozenset({400, 413, 460})
"""A creation-with-upload whose body is refused for what the client sent creates nothing; any other
ending (disconnect, takeover, shutdown, timeout, storage trouble) answers 201 at the offset reached."""


@value_class
class NewUpload:
    """What a creation request asks for, already parsed."""

    length: int | None
    metadata: str | None = None
    concat: Concat | None = None
    announce: Callable[[Upload], None] | None = None
    """Told the new upload once it exists, before a byte of its body is read (IETF's 104)."""


class UploadService:
    def __init__(
        self,
        records: UploadRecords,
        storage: Storage,
        locks: UploadLocks,
        hooks: Hooks,
        policy: Policy,
        network_timeout: float = 60.0,
    ) -> None:
        self.records = records
        self.storage = storage
        self.locks = locks
        self.hooks = hooks
        self.policy = policy
        self.pipeline = WritePipeline(records, storage, locks, policy, hooks, network_timeout)
        hooks.stop_upload = self._stop

    def _stop(self, upload_id: str, answer: HookAnswer) -> None:
        """post-receive said StopUpload: end the request of this process writing the upload."""
        message = answer.body or "upload has been stopped by server"
        self.locks.stop(upload_id, UploadStopped(message, answer.headers, answer.status or 400))

    async def append(self, upload_id: str, offset: int, body: Body, declared_length: int | None) -> Upload:
        """PATCH (the write pipeline's), and the termination of an upload a hook stopped meanwhile."""
        try:
            return await self.pipeline.append(upload_id, offset, body, declared_length)
        except UploadStopped:
            await self._remove_stopped(upload_id)
            raise

    async def _remove_stopped(self, upload_id: str) -> None:
        try:
            await self.terminate(upload_id)
        except TusError as exc:
            log.warning("stopped_upload_not_removed upload_id=%s reason=%s", upload_id, exc.message)

    async def get(self, upload_id: str) -> Upload:
        """The upload as committed; 404 if unknown, 410 if expired (E-7, even before cleanup ran), the
        pre-finish hook's answer if it refused the upload."""
        return _accepted(await self._finished(_alive(await self.records.get(upload_id))))

    async def status(self, upload_id: str) -> Upload:
        """HEAD: like `get`, but a request still writing is asked to finish first, so the offset
        includes what it received (a client resuming after a dropped connection, L-2, I-16)."""
        return _accepted(await self._finished(_alive(await self.locks.wait_until_free(upload_id))))

    async def _finished(self, upload: Upload) -> Upload:
        """A complete upload whose `finish` a crash interrupted is finished now (no storage request
        otherwise: `unfinished` reads the committed state)."""
        if not self.storage.unfinished(upload):
            return upload
        log.info("upload_finish_resumed upload_id=%s", upload.id)
        return await self.pipeline.finish(upload)

    async def create(self, request: NewUpload, body: Body | None, http: RequestInfo | None = None) -> Upload:
        """Create an upload; with a body, append it at offset 0 (creation-with-upload). Once the row
        exists the answer is 201 with the offset reached, whatever happened to the body, so the
        client always has a `Location` to resume at (no orphan it cannot name)."""
        if request.concat is not None and request.concat.is_final:
            if body is not None:
                raise Forbidden("a final upload cannot carry a body")
            return await self._create_final(request, http)
        if request.concat is not None and "concatenation" not in self.storage.capabilities:
            raise BadRequest("this storage does not support the concatenation extension")
        await self._check_size(request.length)
        now = utcnow()
        upload = Upload(
            id=new_upload_id(),
            offset=0,
            length=request.length,
            metadata=request.metadata,
            concat=request.concat.header if request.concat else None,
            created_at=now,
            updated_at=now,
            expires_at=self.policy.lifetime_end(False, now),
        )
        if body is not None:
            self.pipeline.check(upload, body)
        upload = await self._pre_create(upload, http)
        if body is None:
            return await self._add_empty(upload, http)
        upload = await self._create_storage(upload)
        lease = self.locks.new_lease(upload)
        await self._add_row(upload, self._created(upload, http), lease.owner, self.locks.ttl)
        self.hooks.committed()
        log.info("upload_created upload_id=%s length=%s", upload.id, upload.length)
        metrics.uploads_created.inc()
        async with self.locks.kept(lease):
            if request.announce is not None:
                request.announce(upload)
            outcome = await self.pipeline.receive(lease, upload, body)
        problem = outcome.problem
        if isinstance(problem, UploadStopped):  # a post-receive hook stopped it: terminated, as a PATCH
            await self._remove_stopped(upload.id)
            raise problem
        if problem is not None and (problem.status in _REFUSED_BODY or outcome.upload.is_rejected):
            await self._forget(upload)  # the client's own mistake, or refused whole: create nothing (CU-7)
            raise problem
        if problem is not None:
            log.info("upload_body_incomplete upload_id=%s problem=%s", upload.id, problem.message)
        return outcome.upload

    async def _pre_create(self, upload: Upload, http: RequestInfo | None) -> Upload:
        """The pre-create hook sees the upload without an ID yet (as in tusd) and may refuse it, or
        change its ID, metadata and owner. An ID it picks must be free: 409 before anything is stored
        (storage is made before the row, and must never touch another upload's bytes)."""
        if not self.hooks.blocks(EventType.PRE_CREATE):
            return upload
        answer = await self.hooks.before(EventType.PRE_CREATE, replace(upload, id=""), {}, http)
        changed = _changed(upload, answer)
        if changed.id != upload.id and await self.records.known_ids([changed.id]):
            raise UploadIdTaken(f"the upload ID {changed.id} chosen by the pre-create hook is taken")
        return changed

    async def _forget(self, upload: Upload) -> None:
        await self.records.forget(upload.id)
        await self.storage.delete(upload)

    async def _create_storage(self, upload: Upload) -> Upload:
        """Room for the bytes of a new upload (and the backend's state for its row), made before the
        row: a crash in between leaves bytes no row names, which the sweeper reaps after the grace."""
        state = await self.storage.create(upload)
        return upload if state == upload.storage else replace(upload, storage=state)

    async def _add_row(
        self, upload: Upload, events: list[Step], owner: str | None = None, ttl: float = 0.0
    ) -> None:
        """The new upload's row; if it cannot be written, its bytes go again (nothing orphaned)."""
        try:
            await self.records.add(upload, owner, ttl, events)
        except BaseException:
            with contextlib.suppress(Exception):
                await self.storage.delete(upload)
            raise

    def _created(self, upload: Upload, http: RequestInfo | None) -> list[Step]:
        """Outbox rows of a new upload: post-create, and post-finish if it is complete at birth."""
        events = self.hooks.durable(EventType.POST_CREATE, upload, self.storage.describe(upload), http)
        if upload.completed_at is not None and not self.storage.unfinished(upload):
            events += self.hooks.durable(EventType.POST_FINISH, upload, self.storage.describe(upload), http)
        return events

    async def _add_empty(self, upload: Upload, http: RequestInfo | None) -> Upload:
        if upload.length == 0:  # nothing to wait for: complete at birth (CR-6)
            upload = await self._finished_at_birth(self.policy.advanced(upload, 0, upload.created_at), http)
        upload = await self._create_storage(upload)
        await self._add_row(upload, self._created(upload, http))
        log.info("upload_created upload_id=%s length=%s", upload.id, upload.length)
        metrics.uploads_created.inc()
        if upload.completed_at is not None:
            upload = await self.pipeline.finish(upload, http)
        self.hooks.committed()
        return upload

    async def _create_final(self, request: NewUpload, http: RequestInfo | None) -> Upload:
        """concatenation: assemble finished partials, in order, into a new finished upload (§10)."""
        assert request.concat is not None
        if "concatenation" not in self.storage.capabilities:
            raise BadRequest("this storage does not support the concatenation extension")
        if request.length is not None:
            raise BadRequest("a final upload takes its length from its partials: omit Upload-Length")
        most = self.policy.max_concat_parts
        if len(request.concat.parts) > most:
            raise BadRequest(f"a final upload may name at most {most} partial uploads")
        parts = [await self._finished_partial(upload_id) for upload_id in request.concat.parts]
        length = sum(part.offset for part in parts)
        await self._check_size(length)
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
        upload = await self._pre_create(upload, http)
        await self.storage.concatenate(upload, parts)  # the row comes last: nothing half-assembled counts
        try:
            upload = await self._finished_at_birth(upload, http)
        except TusError:
            await self.storage.delete(upload)
            raise
        await self.records.add(upload, events=self._created(upload, http))
        log.info("upload_concatenated upload_id=%s parts=%d length=%d", upload.id, len(parts), length)
        metrics.uploads_created.inc()
        metrics.upload_finished(upload)
        self.pipeline.activity.finished(upload)
        self.hooks.committed()
        if not self.policy.keep_partials:
            for part_id in dict.fromkeys(part.id for part in parts):  # each once, in order
                await self._remove_partial(part_id)
        return upload

    async def _finished_at_birth(self, upload: Upload, http: RequestInfo | None) -> Upload:
        """An upload complete when created (empty, or an assembled final) passes the pre-finish hook
        before its row exists: a refusal creates nothing and answers the hook's status."""
        if not self.hooks.wants(EventType.PRE_FINISH):
            return upload
        checked, refused = await self.pipeline.pre_finish(upload, http)
        if refused is not None:
            raise refused
        return checked

    async def _remove_partial(self, upload_id: str) -> None:
        """Delete a partial the final upload no longer needs; one that cannot be deleted now (held,
        already gone, database trouble) stays, to expire like any other upload."""
        try:
            await self.terminate(upload_id)
        except TusError as exc:
            log.warning("partial_not_removed upload_id=%s reason=%s", upload_id, exc.message)

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

    async def terminate(self, upload_id: str, http: RequestInfo | None = None) -> None:
        """DELETE: remove the upload's bytes, then its row with the post-terminate events (row last:
        a crash in between leaves a row without bytes, which the sweeper reaps, never bytes nobody
        can name)."""
        async with self.locks.hold(upload_id) as lease:
            upload = _alive(lease.upload)
            where = self.storage.describe(upload)
            if http is not None:  # a client's DELETE (not the removal of an assembled partial)
                await self.hooks.before(EventType.PRE_TERMINATE, upload, where, http)
            await self.storage.delete(upload)
            events = self.hooks.durable(EventType.POST_TERMINATE, upload, where, http)
            lease.releasing = True
            if not await self.records.delete(upload_id, lease.owner, events):
                raise UploadLocked("upload was taken over by another request, retry")
            lease.move(LeaseState.RELEASED)
        self.hooks.committed()
        log.info("upload_terminated upload_id=%s", upload_id)
        metrics.uploads_terminated.inc()

    async def _check_size(self, length: int | None) -> None:
        """413 beyond `--max-size`; 507 up front when the storage cannot hold it above its reserve."""
        maximum = self.policy.max_size
        if length is not None and maximum is not None and length > maximum:
            raise TooLarge(f"Upload-Length {length} exceeds the maximum of {maximum} bytes")
        if length:
            room = await self.storage.room()
            if room is not None and length > room:
                raise StorageFull(f"Upload-Length {length} does not fit in the {room} bytes of storage left")


def _changed(upload: Upload, answer: HookAnswer) -> Upload:
    """The new upload with what a pre-create hook changed (`ChangeFileInfo`: ID, metadata)."""
    if answer.new_id is not None:
        if not is_upload_id(answer.new_id):
            log.warning("hook_change_refused new_id=%r (IDs are 32 lowercase hex digits)", answer.new_id)
        else:
            upload = replace(upload, id=answer.new_id)
    if answer.new_metadata is not None:
        upload = replace(upload, metadata=encode_metadata(answer.new_metadata))
    if answer.owner is not None:
        upload = replace(upload, owner=answer.owner)
    return upload


def _accepted(upload: Upload) -> Upload:
    """A pre-finish hook's refusal answers every later request but DELETE as it answered the
    finishing one."""
    if upload.is_rejected:
        raise rejection(upload)
    return upload


def _alive(upload: Upload) -> Upload:
    if is_expired(upload, utcnow()):
        raise UploadGone("upload expired")
    return upload
