"""Deleting expired uploads: `ExpirySweeper`, run on an interval inside the server or once by
`tusserver cleanup`.

Safe with any number of sweepers at once (several instances, a cron job beside them): an upload is
deleted only by whoever takes its lease, so two sweepers never delete the same upload twice and an
upload that a request is writing (its lease held) is skipped until a later sweep. Requests do not wait
for the sweeper: an expired upload already answers 410 (`UploadService.get`).
"""

from __future__ import annotations

import asyncio
import logging

from tusserver.core import Storage, utcnow
from tusserver.errors import ServiceUnavailable, UploadNotFound
from tusserver.locking import UploadLocks
from tusserver.policy import is_expired
from tusserver.records import UploadRecords

log = logging.getLogger(__name__)


class ExpirySweeper:
    def __init__(
        self, records: UploadRecords, storage: Storage, locks: UploadLocks, batch: int = 200
    ) -> None:
        self._records = records
        self._storage = storage
        self._locks = locks
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

    async def _expire(self, upload_id: str) -> bool:
        owner = self._locks.new_owner()
        try:
            upload = await self._records.acquire(upload_id, owner, self._locks.ttl)
        except UploadNotFound:
            return False  # another sweeper or a DELETE was faster
        if upload is None:
            return False  # a request holds it: not abandoned after all, or look again next time
        if not is_expired(upload, utcnow()):
            await self._records.release(upload_id, owner)  # renewed since we listed it
            return False
        if not await self._records.delete(upload_id, owner):
            return False
        await self._storage.delete(upload)
        log.info("upload_expired upload_id=%s offset=%d length=%s", upload_id, upload.offset, upload.length)
        return True

    async def run(self, interval: float) -> None:
        """Sweep every `interval` seconds until cancelled; a failed sweep is logged and retried."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except ServiceUnavailable:
                log.warning("expiry_sweep_skipped reason=database_unavailable")
            except Exception:
                log.exception("expiry_sweep_failed")
