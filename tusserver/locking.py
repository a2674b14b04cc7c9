"""Per-upload locks that hold across processes and hosts: leases on the upload row.

A request takes the lease with one conditional UPDATE (`SqlUploadStore.acquire`), a background task
renews it while the request runs, and it is released in `finally` (or by the offset commit itself).
A lease that is not renewed expires after `ttl` seconds, so a killed process never wedges an upload.
A request that finds the lease taken retries with backoff for up to `wait_timeout` seconds, then gets
423. If renewal fails, `Lease.lost` is set and the writer stops before touching more bytes; its commit
would fail anyway, because commits compare the lock owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from tusserver.core import Upload, utcnow
from tusserver.errors import LockLost, ServiceUnavailable, UploadLocked
from tusserver.store import SqlUploadStore

log = logging.getLogger(__name__)


def instance_name() -> str:
    """Identifies this process in lock owners: host, PID and a random tag."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass
class Lease:
    """One request's hold on one upload."""

    upload: Upload
    owner: str
    lost: bool = False
    released: bool = False

    def check(self) -> None:
        """Raise `LockLost` if the lease can no longer be trusted (called between chunks)."""
        if self.lost:
            raise LockLost(self.upload.id)


class UploadLocks:
    def __init__(self, store: SqlUploadStore, instance: str, ttl: float, wait_timeout: float) -> None:
        self._store = store
        self._instance = instance
        self._ttl = ttl
        self._wait_timeout = wait_timeout

    def new_owner(self) -> str:
        return f"{self._instance}:{secrets.token_hex(4)}"

    def lease_until(self) -> datetime:
        """When a lease taken or renewed now expires."""
        return utcnow() + timedelta(seconds=self._ttl)

    @contextlib.asynccontextmanager
    async def hold(self, upload_id: str) -> AsyncIterator[Lease]:
        """Lease an existing upload for the duration of the block."""
        owner = self.new_owner()
        upload = await self._acquire(upload_id, owner)
        async with self.kept(Lease(upload, owner)) as lease:
            yield lease

    @contextlib.asynccontextmanager
    async def kept(self, lease: Lease) -> AsyncIterator[Lease]:
        """Renew an acquired lease in the background; release it on exit unless already released."""
        renewer = asyncio.create_task(self._renew_until_cancelled(lease))
        try:
            yield lease
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            if not lease.released:
                await self._release_quietly(lease)

    async def _acquire(self, upload_id: str, owner: str) -> Upload:
        deadline = time.monotonic() + self._wait_timeout
        delay = 0.005
        while True:
            upload = await self._store.acquire(upload_id, owner, utcnow(), self.lease_until())
            if upload is not None:
                return upload
            if time.monotonic() + delay > deadline:
                raise UploadLocked("upload is busy with another request, retry later")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)

    async def _renew_until_cancelled(self, lease: Lease) -> None:
        while not lease.lost:
            await asyncio.sleep(self._ttl / 3)
            try:
                renewed = await self._store.renew(lease.upload.id, lease.owner, self.lease_until())
            except ServiceUnavailable:
                continue  # the lease may still be valid; try again at the next beat
            if not renewed:
                log.warning("lock_lost upload_id=%s owner=%s", lease.upload.id, lease.owner)
                lease.lost = True

    async def _release_quietly(self, lease: Lease) -> None:
        try:
            await self._store.release(lease.upload.id, lease.owner)
        except ServiceUnavailable:
            log.warning("lock_release_failed upload_id=%s (expires by itself)", lease.upload.id)
        lease.released = True
