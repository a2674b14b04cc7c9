"""The write path: one request body from the socket to a committed offset, for PATCH and for
creation-with-upload.

Owns, in order: the checks before a byte is read (PROTOCOL.md §1.3: 403 final, 409 offset, 413 size,
checksum syntax), reading the ASGI body straight from `receive` (`BodyReader`), the byte budget, the
running checksum (fed by the storage writer), checkpoints during long bodies (crash safety; each one
also renews the lease), the final compare-and-set commit, `Storage.finish` after a completing commit,
and the answer every way of ending implies:

| how the body ended                      | committed                | answer                |
|-----------------------------------------|--------------------------|-----------------------|
| read to its end                         | everything (checksum ok) | 204 / 201             |
| client disconnected                     | what arrived (no checksum)| (nobody listens)     |
| another request took over               | what arrived (no checksum)| 409 + Upload-Offset  |
| this process is shutting down           | what arrived (no checksum)| 503 + Retry-After    |
| no bytes for --network-timeout seconds  | what arrived (no checksum)| 408                  |
| a post-receive hook stopped the upload  | what arrived, then deleted| 400 (the hook's answer)|
| lease lost or no longer trusted         | nothing it does not own  | 409                   |
| storage full / failing / file missing   | what reached storage     | 507 / 503 / 410       |
| body past Upload-Length (no Content-Length) | up to the length     | 204, as tusd          |

The per-chunk path is a loop over `receive()` with no task, no queue and no generator per chunk: a
length check, one clock read and the writer's append. Only while a PATCH of a large body waits for
its lease does a task read ahead (`BodyReader.start_reading_ahead`, bounded per request and per
process), so the database's round trip overlaps the body's first bytes. A stalled body is
interrupted by cancelling the one wait for the client it is in (`BodyReader.poke`); the read-ahead
task is cancelled only when the request is answered without reading its body. Bytes are counted for
`/metrics` at checkpoints and once when the body ends, and a body is registered with `activity` (the
operator page) once when it starts and once when it ends: never per chunk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass, replace
from typing import Any

from tusserver import metrics
from tusserver.activity import Activity
from tusserver.core import Hasher, Storage, StorageWriter, Upload, WriteResult, utcnow
from tusserver.errors import (
    BadRequest,
    ChecksumMismatch,
    Forbidden,
    LeaseLost,
    OffsetMismatch,
    RequestTimeout,
    ServiceUnavailable,
    TooLarge,
    TusError,
    UploadGone,
    UploadRejected,
    UploadStopped,
)
from tusserver.events import EventType, RequestInfo
from tusserver.hooks import HookRejected, Hooks
from tusserver.locking import Lease, LeaseState, UploadLocks
from tusserver.logs import current_request
from tusserver.policy import Policy, is_expired
from tusserver.protocol import UPLOAD_LENGTH, UPLOAD_OFFSET, Checksum, parse_checksum
from tusserver.records import UploadRecords
from tusserver.statements import RETRY_AFTER_SECONDS

log = logging.getLogger(__name__)
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
READ_AHEAD = 8 << 20
"""Body bytes one PATCH may read while its lease is taken (the database's round trip: under load on
PostgreSQL its tail outlasted 4 MiB of body)..."""
READ_AHEAD_TOTAL = 8 << 20
"""... and all PATCHes of this process at once."""
READ_AHEAD_FROM = 256 << 10
"""Smaller bodies arrive with their headers: nothing to overlap."""


class BodyReader:
    """The request body straight from ASGI `receive`. `next()` returns the next chunk, or b"" when
    the body ended (`ended`) or the reader was poked; it never raises for a disconnect.

    While the request waits for its lease, a task may read ahead (`start_reading_ahead`): the
    chunks it takes are handed out first, and a `next()` that finds it still waiting on the client
    waits for that same `receive()` (shielded: a poke never cancels a `receive()` of its)."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[Any] | None = None
        self._waiting = False
        self._poked = False
        self.ended = False
        self.disconnected = False
        self.received = 0
        """Body bytes handed out so far."""
        self._early: deque[bytes] = deque()
        self._ahead: asyncio.Task[None] | None = None
        self._ahead_stop = False

    def poke(self) -> None:
        """Wake a `next()` that waits for the client (stop, checkpoint); harmless otherwise."""
        if self._waiting and not self._poked and self._task is not None:
            self._poked = True
            self._task.cancel()

    async def next(self) -> bytes:
        while self._ahead is not None or self._early:
            if self._early:
                return self._handed(self._early.popleft())
            ahead = self._ahead
            assert ahead is not None
            if ahead.done():
                self._ahead = None
                ahead.result()
            elif await self._wait(asyncio.shield(ahead)) is _POKED:
                return b""
        if self.ended:
            return b""
        message = await self._wait(self._receive())
        return b"" if message is _POKED else self._handed(self._chunk(message))

    def start_reading_ahead(self, limit: int) -> None:
        """Read up to `limit` bytes in a task of its own while the request waits for something else
        (its lease: a database round trip), so that wait overlaps the body's first bytes. Stops at
        `limit`, at the end of the body, or after the `receive()` under way at `stop_reading_ahead`."""
        self._ahead = asyncio.ensure_future(self._read_ahead(limit))

    def stop_reading_ahead(self) -> None:
        self._ahead_stop = True

    def abandon(self) -> None:
        """The request is answered without (the rest of) its body: a read-ahead still waiting ends."""
        self._ahead_stop = True
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return
        if ahead.done():
            if not ahead.cancelled():
                ahead.exception()  # retrieved: nobody reads this body any more
        else:
            ahead.cancel()

    async def _read_ahead(self, limit: int) -> None:
        taken = 0
        while not self._ahead_stop and taken < limit and not self.ended:
            chunk = self._chunk(await self._receive())
            if chunk:
                self._early.append(chunk)
                taken += len(chunk)

    async def _wait(self, awaitable: Awaitable[Any]) -> Any:
        """`awaitable`'s result, or `_POKED` if `poke()` woke this first."""
        self._task = asyncio.current_task()
        self._waiting = True
        try:
            return await awaitable
        except asyncio.CancelledError:
            if not self._poked or self._task is None:
                raise
            self._task.uncancel()  # our own poke: the receive stays intact, its bytes stay queued
            return _POKED
        finally:
            self._waiting = self._poked = False

    def _chunk(self, message: Mapping[str, Any]) -> bytes:
        if message["type"] == "http.disconnect":
            self.ended = self.disconnected = True
            return b""
        if not message.get("more_body", False):
            self.ended = True
        chunk: bytes = message.get("body", b"")
        return chunk

    def _handed(self, chunk: bytes) -> bytes:
        self.received += len(chunk)
        return chunk

    async def queued(self) -> bytes:
        """A chunk the server already read from the socket, if any, without waiting for the client
        (so an interrupted request keeps every byte that reached this process)."""
        if self._early or self.ended:
            return await self.next()
        waiter = asyncio.ensure_future(self.next())
        await asyncio.sleep(0)
        if waiter.done():
            return waiter.result()
        self._poked = True
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        return b""


_POKED = object()


@dataclass(frozen=True)
class Body:
    """A request body and what its headers promise about it."""

    reader: BodyReader
    content_length: int | None
    checksum: str | None = None
    """The raw `Upload-Checksum` header; parsed only once the other checks passed (K-10)."""
    request: RequestInfo | None = None
    """The request it came with, for the hook events it causes."""


@dataclass(frozen=True)
class Outcome:
    """How a body ended: the upload as committed, and the error to answer with (None: success)."""

    upload: Upload
    problem: TusError | None = None


class WritePipeline:
    """body -> limit -> checksum -> checkpoint -> commit, for every request that carries upload bytes."""

    def __init__(
        self,
        records: UploadRecords,
        storage: Storage,
        locks: UploadLocks,
        policy: Policy,
        hooks: Hooks,
        network_timeout: float = 60.0,
    ) -> None:
        self.records = records
        self.storage = storage
        self.locks = locks
        self.policy = policy
        self.hooks = hooks
        self.network_timeout = network_timeout
        self.activity = Activity()
        self._ahead_room = READ_AHEAD_TOTAL

    async def append(self, upload_id: str, offset: int, body: Body, declared_length: int | None) -> Upload:
        """PATCH: append `body` at `offset`, declaring a deferred length if given. A large body's
        first bytes are read while the lease is taken (bounded per request and per process)."""
        ahead = self._read_ahead(body)
        try:
            return await self._append(upload_id, offset, body, declared_length)
        finally:
            body.reader.abandon()
            self._ahead_room += ahead

    def _read_ahead(self, body: Body) -> int:
        length = body.content_length
        if length is not None and length < READ_AHEAD_FROM:
            return 0
        limit = min(READ_AHEAD, self._ahead_room)
        if limit > 0:
            self._ahead_room -= limit
            body.reader.start_reading_ahead(limit)
        return limit

    async def _append(self, upload_id: str, offset: int, body: Body, declared_length: int | None) -> Upload:
        async with self.locks.hold(upload_id) as lease:
            body.reader.stop_reading_ahead()
            upload = lease.upload
            if is_expired(upload, utcnow()):
                raise UploadGone("upload expired")
            if upload.is_rejected:
                raise rejection(upload)
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
            self.check(upload, body)
            outcome = await self.receive(lease, upload, body)
        if outcome.problem is not None:
            raise outcome.problem
        return outcome.upload

    def check(self, upload: Upload, body: Body) -> None:
        """What can be refused before a byte is read: a declared body too large, a bad checksum header."""
        room = self.policy.room(upload)
        if room is not None and body.content_length is not None and body.content_length > room:
            raise TooLarge(f"body of {body.content_length} bytes exceeds the {room} bytes left")
        checksum = parse_checksum(body.checksum)
        if checksum is not None and checksum.digest is None:
            raise ChecksumMismatch(f"{checksum.algorithm} digest has the wrong length")

    async def receive(self, lease: Lease, upload: Upload, body: Body) -> Outcome:
        """Stream `body` into storage under `lease` and commit; never raises a `TusError` once the
        first byte may have been stored (the outcome carries it), so creation can still answer 201."""
        checksum = parse_checksum(body.checksum)
        hasher = checksum.hasher() if checksum else None
        run = _Run(self, lease, upload, body.reader, hasher, body.request)
        lease.watch(body.reader.poke, run.tick)
        metrics.bodies_in_progress.inc()
        offset = upload.offset
        token = self.activity.begin(upload, run)
        try:
            await run.stream()
            outcome = await self._conclude(run, checksum)
            offset = outcome.upload.offset
            return outcome
        finally:
            lease.unwatch()
            self.activity.end(token)
            metrics.bodies_in_progress.dec()
            run.report(max(offset, run.upload.offset))
            context = current_request()
            if context is not None:
                context.bytes_in += run.received

    async def _conclude(self, run: _Run, checksum: Checksum | None) -> Outcome:
        stopped = run.stopped_as  # a body read whole counts, even if a stop came just after
        result = await run.close()
        problem = run.failure
        if checksum is not None:
            problem = problem or _checksum_problem(checksum, run, stopped)
            if problem is not None:
                return Outcome(run.upload, problem)  # nothing of this body counts (K-6)
        try:
            upload = await self._commit(run, result)
        except ServiceUnavailable as unavailable:
            return Outcome(run.upload, unavailable)  # what the last checkpoint committed still holds
        if upload is None:
            return Outcome(run.upload, LeaseLost("another request took over this upload; resume with HEAD"))
        if run.refused is not None:
            return Outcome(upload, run.refused)
        return Outcome(upload, problem or _stop_problem(stopped, upload, run))

    async def _commit(self, run: _Run, result: WriteResult) -> Upload | None:
        """The compare-and-set that makes the stored bytes count (with the post-finish events if it
        completes the upload, in the same transaction), then `finish`. A completing commit first asks
        the pre-finish hook: a refusal is committed with the bytes (complete but rejected, no
        post-finish); a hook that cannot be reached commits nothing of this body (503)."""
        before = run.upload
        upload = self.policy.advanced(before, result.written - run.checkpointed, utcnow())
        if result.storage:  # backend state to record with the offset (S3: its parts)
            upload = replace(upload, storage={**before.storage, **result.storage})
        completing = upload.completed_at is not None and before.completed_at is None
        if completing:
            upload, run.refused = await self.pre_finish(upload, run.request)
        # post-finish goes with the completing commit, or, where the stored object only exists once
        # `finish` is done (S3), with the commit that records it, the lease kept until then.
        keep = completing and self.storage.unfinished(upload)
        events = (
            self.hooks.durable(EventType.POST_FINISH, upload, self.storage.describe(upload), run.request)
            if completing and not keep and not upload.is_rejected
            else ()
        )
        run.lease.releasing = not keep
        committed = await self.records.commit(
            upload, run.lease.owner, before.offset, release=not keep, ttl=self.locks.ttl, events=events
        )
        if committed is None:
            return None
        self.storage.committed(before, committed)
        if not keep:
            run.lease.move(LeaseState.RELEASED)
        if self.hooks.reports_progress and committed.offset != before.offset:
            self.hooks.progressed(committed, self.storage.describe(committed), run.request)
        if completing:  # only the completing request gets here
            committed = await self.finish(committed, run.request, run.lease if keep else None)
            self.hooks.committed()
        return committed

    async def finish(
        self, upload: Upload, request: RequestInfo | None = None, lease: Lease | None = None
    ) -> Upload:
        """`Storage.finish` a complete upload. Where the backend has state to record afterwards (S3:
        `unfinished`), that happens under `lease` (the completing request's, kept: a HEAD or GET
        meanwhile waits for it) or a lease taken here first, with the post-finish events held back
        for it, so one request at a time finishes. If the record cannot be written (a crash, a
        takeover), the upload stays `unfinished` and is finished again on its next access
        (`UploadService.get`) or by the sweeper."""
        if lease is not None:
            return await self._finish_under(lease, upload, request)
        if not self.storage.unfinished(upload):  # nothing to record (local files)
            await self.storage.finish(upload)
            self._finished(upload)
            return upload
        async with self.locks.hold(upload.id) as held:
            if not self.storage.unfinished(held.upload):
                return held.upload  # finished by another request meanwhile
            return await self._finish_under(held, held.upload, request)

    async def _finish_under(self, lease: Lease, upload: Upload, request: RequestInfo | None) -> Upload:
        state = await self.storage.finish(upload)  # on failure the holder's context releases `lease`
        if not state:
            self._finished(upload)
            return upload
        done = replace(upload, storage={**upload.storage, **state})
        events = (
            ()
            if done.is_rejected  # refused by pre-finish: no post-finish
            else self.hooks.durable(EventType.POST_FINISH, done, self.storage.describe(done), request)
        )
        lease.releasing = True
        recorded = await self.records.commit(done, lease.owner, upload.offset, release=True, events=events)
        if recorded is None:
            return upload  # taken over meanwhile: still `unfinished`, finished again later
        lease.move(LeaseState.RELEASED)
        self._finished(recorded)  # counted once: when the finish is recorded
        self.hooks.committed()
        return recorded

    def _finished(self, upload: Upload) -> None:
        log.info("upload_finished upload_id=%s length=%s", upload.id, upload.length)
        if not upload.is_rejected:  # a refused upload is no success, for metrics and operators
            metrics.upload_finished(upload)
            self.activity.finished(upload)

    async def pre_finish(
        self, upload: Upload, request: RequestInfo | None
    ) -> tuple[Upload, UploadRejected | None]:
        """The pre-finish hook on an upload whose last byte is stored but not yet committed: the
        upload, marked rejected with the hook's status and message if it refused, and the answer
        to that request (with the hook's headers)."""
        try:
            await self.hooks.before(EventType.PRE_FINISH, upload, self.storage.describe(upload), request)
        except HookRejected as refusal:
            refused = replace(upload, rejected_status=refusal.status, rejected_reason=refusal.message)
            return refused, rejection(refused, refusal.headers)
        except TusError:
            raise
        except Exception:
            log.exception("hook_failed type=pre-finish upload_id=%s", upload.id)
            raise ServiceUnavailable(
                "the pre-finish hook failed, retry later", {"Retry-After": RETRY_AFTER_SECONDS}
            ) from None
        return upload, None

    def _declare_length(self, upload: Upload, length: int) -> Upload:
        """creation-defer-length: set the length once; repeating the same value is harmless (D-5)."""
        if upload.length is not None:
            if length != upload.length:
                raise BadRequest(f"Upload-Length is already {upload.length} and cannot change")
            return upload
        if length < upload.offset:
            raise BadRequest(f"Upload-Length {length} is below the current offset {upload.offset}")
        maximum = self.policy.max_size
        if maximum is not None and length > maximum:
            raise TooLarge(f"Upload-Length {length} exceeds the maximum of {maximum} bytes")
        return replace(upload, length=length)


class _Run:
    """The state of one body on its way in: the loop, its budget and its checkpoints."""

    def __init__(
        self,
        pipeline: WritePipeline,
        lease: Lease,
        upload: Upload,
        reader: BodyReader,
        hasher: Hasher | None,
        request: RequestInfo | None,
    ) -> None:
        self.pipeline = pipeline
        self.request = request
        self.lease = lease
        self.upload = upload
        self.reader = reader
        self.hasher = hasher
        self.writer: StorageWriter = pipeline.storage.writer(upload, hasher)
        self.room = pipeline.policy.room(upload)
        self.exceeded = False
        self.received = 0
        self.checkpointed = 0
        self.reported_received = 0
        self.reported_offset = upload.offset
        self.failure: TusError | None = None
        self.refused: UploadRejected | None = None
        """The pre-finish hook's refusal of the upload this body completed."""
        every = None if hasher is not None else pipeline.policy.commit_every
        self.every = every
        self.next_checkpoint = time.monotonic() + every if every else float("inf")
        self.last_bytes_at = time.monotonic()
        self.stopped_as = LeaseState.HELD
        """The lease's state when the loop ended early; HELD if the body ended by itself."""

    async def stream(self) -> None:
        lease, reader = self.lease, self.reader
        try:
            while not lease.stopping:
                chunk = await reader.next()
                if chunk:
                    now = time.monotonic()
                    self.last_bytes_at = now
                    if not await self._take(chunk, now):
                        self.stopped_as = lease.state  # LOST, or HELD when the budget ran out
                        return
                    if now >= self.next_checkpoint:
                        await self._checkpoint()
                elif reader.ended:
                    return
                elif time.monotonic() >= self.next_checkpoint:
                    await self._checkpoint()  # poked while the client is slow: commit what came
            self.stopped_as = lease.state
            await self._drain()
        except TusError as problem:  # storage full or failing: stop reading, keep what was stored
            self.failure = problem

    async def _take(self, chunk: bytes, now: float) -> bool:
        """Budget, trust, then the writer; False once the body must not go on."""
        if self.room is not None and self.received + len(chunk) > self.room:
            chunk = chunk[: self.room - self.received]
            self.exceeded = True
        if not self.lease.trusted(now):
            return False
        self.received += len(chunk)
        if chunk:
            await self.writer.write(chunk)
        return not self.exceeded

    async def _drain(self) -> None:
        """Stopped early: keep what the server already read from the socket (not with a checksum,
        which will not count anyway, nor once the lease is lost)."""
        if self.hasher is not None or self.lease.state is LeaseState.LOST:
            return
        while chunk := await self.reader.queued():
            if not await self._take(chunk, time.monotonic()):
                return

    async def _checkpoint(self) -> None:
        """Make what arrived durable and count it, renewing the lease in the same statement."""
        assert self.every is not None
        if not self.lease.trusted(time.monotonic()):
            return  # LOST now: the loop stops, and nothing held back is written
        self.next_checkpoint = time.monotonic() + self.every
        result = await self.writer.flush()
        pipeline, before = self.pipeline, self.upload
        upload = pipeline.policy.advanced(before, result.written - self.checkpointed, utcnow())
        if upload.is_complete:
            return  # finishing belongs to the final commit
        if result.storage:
            upload = replace(upload, storage={**before.storage, **result.storage})
        sent_at = time.monotonic()
        try:
            committed = await pipeline.records.commit(
                upload, self.lease.owner, before.offset, release=False, ttl=pipeline.locks.ttl
            )
        except ServiceUnavailable:
            return  # the database is away: keep streaming while the lease is trusted, retry next time
        if committed is None:
            self.lease.move(LeaseState.LOST)
            return
        self.lease.renewed(sent_at)
        pipeline.storage.committed(before, committed)
        self.upload, self.checkpointed = committed, result.written
        self.report(committed.offset)
        if pipeline.hooks.reports_progress:
            pipeline.hooks.progressed(committed, pipeline.storage.describe(committed), self.request)

    def report(self, offset: int) -> None:
        """Count the bytes received and committed since the last report: at checkpoints and once
        when the body ends, never per chunk."""
        metrics.bytes_received.inc(self.received - self.reported_received)
        metrics.bytes_committed.inc(max(offset - self.reported_offset, 0))
        self.reported_received, self.reported_offset = self.received, max(offset, self.reported_offset)

    def tick(self, now: float) -> None:
        """About once a second, from the lease keeper: a silent client times out; a slow one gets
        its bytes committed when the commit interval passed, not only when a block filled."""
        if now - self.last_bytes_at >= self.pipeline.network_timeout:
            self.lease.move(LeaseState.TIMED_OUT)
        elif now >= self.next_checkpoint and self.received > self.checkpointed:
            self.reader.poke()

    async def close(self) -> WriteResult:
        """Store what is held back, unless the lease is lost: then not one more byte goes out."""
        try:
            if self.lease.state is LeaseState.LOST:
                return await self.writer.abort()
            return await self.writer.close()
        except TusError as problem:
            self.failure = self.failure or problem
            return self.writer.result()


def rejection(upload: Upload, extra: Mapping[str, str] | None = None) -> UploadRejected:
    """The answer for an upload a pre-finish hook refused, with the offset it reached (and `extra`
    headers: the hook's own, for the request it refused)."""
    message = upload.rejected_reason or "upload rejected by the pre-finish hook"
    headers = {**(extra or {}), UPLOAD_OFFSET: str(upload.offset)}
    if upload.length is not None:
        headers[UPLOAD_LENGTH] = str(upload.length)
    return UploadRejected(upload.rejected_status or 400, message, headers)


def _checksum_problem(checksum: Checksum, run: _Run, stopped: LeaseState) -> TusError | None:
    """A checksummed body counts only if it arrived whole and matches (K-5, K-6)."""
    if stopped is not LeaseState.HELD:
        return _interruption(stopped, run.upload, run)
    if run.exceeded:
        return TooLarge("body exceeds the upload's length; nothing was stored")
    if run.reader.disconnected:
        return BadRequest("body incomplete; with Upload-Checksum nothing was stored")
    if run.hasher is None or run.hasher.digest() != checksum.digest:
        return ChecksumMismatch(f"{checksum.algorithm} checksum mismatch; nothing was stored")
    return None


def _stop_problem(stopped: LeaseState, upload: Upload, run: _Run) -> TusError | None:
    """The answer for a body that did not end by itself (None: it did, or nobody listens)."""
    if stopped is LeaseState.HELD or run.reader.disconnected:
        if run.exceeded and upload.length is None:
            return TooLarge(f"body exceeds the maximum size; {upload.offset} bytes are stored")
        return None
    return _interruption(stopped, upload, run)


def _interruption(stopped: LeaseState, upload: Upload, run: _Run) -> TusError:
    offset = {UPLOAD_OFFSET: str(upload.offset)}
    network_timeout = run.pipeline.network_timeout
    if stopped is LeaseState.STOPPED:
        return run.lease.stopped_by or UploadStopped()
    if stopped is LeaseState.SHUTDOWN:
        message = f"server shutting down; {upload.offset} bytes are stored, resume elsewhere"
        return ServiceUnavailable(message, {**offset, "Retry-After": "1"})
    if stopped is LeaseState.TIMED_OUT:
        return RequestTimeout(f"no bytes for {network_timeout:g} s; {upload.offset} bytes are stored", offset)
    if stopped is LeaseState.LOST:
        return LeaseLost("this request lost its hold on the upload; resume with HEAD")
    return OffsetMismatch(f"another request took over this upload; resume at {upload.offset}", offset)
