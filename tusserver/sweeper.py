"""`Sweeper`: deleting what nobody will use again, on an interval inside the server or once by
`tusserver cleanup`: expired uploads, and orphans (stored bytes without an upload row, rows whose bytes
are gone), so that the disk cannot leak; and complete uploads whose `Storage.finish` a crash cut
short (an S3 multipart upload never completed), which are finished.

Safe with any number of sweepers at once (several instances, a cron job beside them) and under
traffic: an upload is deleted only by whoever takes its lease, so two sweepers never delete the same
upload twice, and an upload a request is working on (its lease held) is skipped until a later sweep.
Bytes go before the row, so a crash in between leaves a row without bytes, which the next sweep
reaps. A row is "without bytes" only if it has committed some: an upload at offset 0 may have no
storage yet (a local file is made by its first write) and leaves by expiry or DELETE. Orphans are
only considered once they are older than `orphan_grace`: a request may be creating the row of new
bytes, or assembling a final upload whose row comes last, right now. Rows are never
reaped en masse: a page where most uploads have no bytes means a wrong or unmounted data directory.
Requests do not wait for the sweeper: an expired upload already answers 410 (`UploadService.get`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from tusserver import metrics
from tusserver.core import Storage, Upload, utcnow
from tusserver.errors import ServiceUnavailable, TusError, UploadNotFound
from tusserver.locking import UploadLocks
from tusserver.policy import is_expired
from tusserver.records import UploadRecords

log = logging.getLogger(__name__)
ORPHAN_SCAN_AT_MOST_EVERY = 900.0
"""Seconds between two orphan scans in a running server (they read every row and every file)."""
SUSPICIOUS_LOSS = 10
"""More rows than this (and than half a page) without bytes: a misconfiguration, not lost files."""


class Sweeper:
    def __init__(
        self,
        records: UploadRecords,
        storage: Storage,
        locks: UploadLocks,
        orphan_grace: float = 3600.0,
        batch: int = 200,
        finish: Callable[[Upload], Awaitable[Upload]] | None = None,
    ) -> None:
        self._records = records
        self._storage = storage
        self._locks = locks
        self._finish = finish
        """Finishes a complete upload whose `Storage.finish` a crash interrupted (the write path's)."""
        self._orphan_grace = timedelta(seconds=orphan_grace)
        self._batch = batch

    async def sweep(self) -> int:
        """Delete every upload expired by now; returns how many this sweeper deleted."""
        deleted = 0
        while True:
            candidates = await self._records.expired_ids(utcnow(), self._batch)
            removed = [upload_id for upload_id in candidates if await self._expire(upload_id)]
            deleted += len(removed)
            if len(candidates) < self._batch or not removed:
                return deleted

    async def _take(self, upload_id: str, owner: str) -> Upload | None:
        """The upload with its lease taken by `owner`, or None: gone already (another sweeper or a
        DELETE was faster) or held (someone works on it: look again next time)."""
        try:
            return await self._records.acquire(upload_id, owner, self._locks.ttl)
        except UploadNotFound:
            return None

    async def _expire(self, upload_id: str) -> bool:
        owner = self._locks.new_owner()
        upload = await self._take(upload_id, owner)
        if upload is None:
            return False
        if not is_expired(upload, utcnow()):
            await self._records.release(upload_id, owner)  # renewed since we listed it
            return False
        await self._storage.delete(upload)
        if not await self._records.delete(upload_id, owner):
            return False
        log.info("upload_expired upload_id=%s offset=%d length=%s", upload_id, upload.offset, upload.length)
        metrics.uploads_expired.inc()
        return True

    async def reap_orphans(self) -> int:
        """Delete stored bytes without a row and rows without stored bytes, older than the grace
        period, and finish complete uploads whose finish a crash interrupted; returns how many of
        these this sweeper handled."""
        cutoff = utcnow() - self._orphan_grace
        reaped = 0
        async for stored in self._storage.stored_before(cutoff, self._batch):
            known = await self._records.known_ids(stored)
            for upload_id in stored:
                if upload_id not in known and await self._storage.discard(upload_id):
                    log.warning("orphan_bytes_removed upload_id=%s", upload_id)
                    reaped += 1
        reaped += await self._finish_interrupted(cutoff)
        after = ""
        while page := await self._records.ids_with_bytes_created_before(cutoff, after, self._batch):
            lost = sorted(await self._storage.missing(page))
            if len(lost) > max(SUSPICIOUS_LOSS, len(page) // 2):
                log.error(
                    "orphan_rows_not_removed lost=%d of=%d: so many uploads without bytes looks like "
                    "the wrong data directory or an unmounted volume, not lost files",
                    len(lost), len(page),
                )  # fmt: skip
                break
            for upload_id in lost:
                reaped += await self._reap_row_without_bytes(upload_id)
            after = page[-1]
        return reaped

    async def _finish_interrupted(self, cutoff: datetime) -> int:
        """Complete uploads whose finish a crash cut short and that nobody asked for since: finished
        now, so that their storage is not left half-done (an S3 multipart upload billed forever)."""
        if self._finish is None:
            return 0
        finished = 0
        async for batch in self._storage.pending_before(cutoff, self._batch):
            for upload_id in batch:
                try:
                    upload = await self._records.get(upload_id)
                except UploadNotFound:
                    continue  # an orphan: reaped above
                if not self._storage.unfinished(upload):
                    continue
                log.warning("upload_finish_resumed upload_id=%s by=sweeper", upload_id)
                try:
                    await self._finish(upload)
                except TusError as problem:  # storage still failing: the next scan tries again
                    log.warning("upload_finish_failed upload_id=%s reason=%s", upload_id, problem.message)
                    continue
                finished += 1
        return finished

    async def _reap_row_without_bytes(self, upload_id: str) -> bool:
        owner = self._locks.new_owner()
        upload = await self._take(upload_id, owner)
        if upload is None:  # a DELETE that removed the bytes first holds it, for instance
            return False
        if not await self._storage.missing([upload_id]):
            await self._records.release(upload_id, owner)
            return False
        if not await self._records.delete(upload_id, owner):
            return False
        log.warning("orphan_row_removed upload_id=%s offset=%d", upload_id, upload.offset)
        return True

    async def run(self, interval: float) -> None:
        """Sweep every `interval` seconds until cancelled, and look for orphans every so often (a
        quarter of the grace period, within [interval, 15 min]); a failed sweep is logged and retried."""
        orphan_every = max(interval, min(self._orphan_grace.total_seconds() / 4, ORPHAN_SCAN_AT_MOST_EVERY))
        last_orphan_scan = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
                if time.monotonic() - last_orphan_scan >= orphan_every:
                    last_orphan_scan = time.monotonic()
                    await self.reap_orphans()
            except ServiceUnavailable:
                log.warning("sweep_skipped reason=database_unavailable")
            except Exception:
                log.exception("sweep_failed")
