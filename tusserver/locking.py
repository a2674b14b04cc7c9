"""Per-upload locks that hold across processes and hosts: leases on the upload row.

A request takes the lease with one conditional UPDATE (`SqlUploadStore.acquire`); a background task
renews it (every second at most) while the request runs, and it is released in `finally` or by the
offset commit itself. A lease that is not renewed expires after `ttl` seconds, so a killed process
never wedges an upload.

Takeover: a request that finds the lease taken asks the holder to let go (`release_requested` in the
row, or directly when the holder runs in this process) and retries with backoff for up to
`wait_timeout` seconds before answering 423. The holder sees the request at its next renewal, sets
`Lease.stop`, stops reading its body, commits what it received and releases. So a client that
reconnects after a dropped connection, to any instance, resumes within about a second instead of
waiting for a stalled request to time out. If renewal finds the lease gone, `Lease.lost` is set and
the writer stops before touching more bytes; its commit would fail anyway, because commits compare the
lock owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from tusserver.core import Upload, utcnow
from tusserver.errors import LockLost, ServiceUnavailable, UploadLocked
from tusserver.store import SqlUploadStore

log = logging.getLogger(__name__)
RENEW_EVERY = 1.0
"""Seconds between renewals at most: also how fast a holder on another instance notices a takeover."""


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
    stopping: bool = False
    """True once another request (or shutdown) asked this one to finish early and let go."""
    shutting_down: bool = False
    on_stop: list[Callable[[], None]] = field(default_factory=list)

    def request_stop(self, shutdown: bool = False) -> None:
        self.shutting_down = self.shutting_down or shutdown
        if not self.stopping:
            self.stopping = True
            for callback in self.on_stop:
                callback()

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
        self._local: dict[str, Lease] = {}

    def new_owner(self) -> str:
        return f"{self._instance}:{secrets.token_hex(4)}"

    def lease_until(self) -> datetime:
        """When a lease taken or renewed now expires."""
        return utcnow() + timedelta(seconds=self._ttl)

    @contextlib.asynccontextmanager
    async def hold(self, upload_id: str) -> AsyncIterator[Lease]:
        """Lease an existing upload for the duration of the block (taking it over if need be)."""
        owner = self.new_owner()
        upload = await self._acquire(upload_id, owner)
        async with self.kept(Lease(upload, owner)) as lease:
            yield lease

    @contextlib.asynccontextmanager
    async def kept(self, lease: Lease) -> AsyncIterator[Lease]:
        """Renew an acquired lease in the background; release it on exit unless already released."""
        self._local[lease.upload.id] = lease
        renewer = asyncio.create_task(self._renew_until_cancelled(lease))
        try:
            yield lease
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            if self._local.get(lease.upload.id) is lease:
                del self._local[lease.upload.id]
            if not lease.released:
                await self._release_quietly(lease)

    async def wait_until_free(self, upload_id: str) -> Upload:
        """For status requests: ask a holder to let go and wait (bounded) so that the offset read
        afterwards includes what the holder received. Returns the upload as committed then."""
        upload, held = await self._store.get_with_lock(upload_id, utcnow())
        if not held:
            return upload
        await self._ask_holder(upload_id)
        deadline = time.monotonic() + self._wait_timeout
        delay = 0.005
        while held and time.monotonic() + delay < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
            upload, held = await self._store.get_with_lock(upload_id, utcnow())
        return upload  # still held after the wait: its committed offset is still a valid answer

    def stop_all(self) -> None:
        """Shutdown: ask every request of this process that holds a lease to finish early."""
        for lease in list(self._local.values()):
            lease.request_stop(shutdown=True)

    async def _ask_holder(self, upload_id: str) -> None:
        local = self._local.get(upload_id)
        if local is not None:
            local.request_stop()  # same process: no need to wait for its next renewal
        else:
            await self._store.request_release(upload_id)

    async def _acquire(self, upload_id: str, owner: str) -> Upload:
        deadline = time.monotonic() + self._wait_timeout
        delay = 0.005
        asked = False
        while True:
            local = self._local.get(upload_id)
            if local is not None:
                local.request_stop()
            ask = not asked and local is None
            upload = await self._store.acquire(upload_id, owner, utcnow(), self.lease_until(), ask)
            if upload is not None:
                return upload
            asked = True
            if time.monotonic() + delay > deadline:
                raise UploadLocked("upload is busy with another request, retry later")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def _renew_until_cancelled(self, lease: Lease) -> None:
        while not lease.lost:
            await asyncio.sleep(min(self._ttl / 3, RENEW_EVERY))
            try:
                held, requested = await self._store.renew(lease.upload.id, lease.owner, self.lease_until())
            except ServiceUnavailable:
                continue  # the lease may still be valid; try again at the next beat
            if not held:
                log.warning("lock_lost upload_id=%s owner=%s", lease.upload.id, lease.owner)
                lease.lost = True
            elif requested:
                log.info("lock_release_requested upload_id=%s", lease.upload.id)
                lease.request_stop()

    async def _release_quietly(self, lease: Lease) -> None:
        try:
            await self._store.release(lease.upload.id, lease.owner)
        except ServiceUnavailable:
            log.warning("lock_release_failed upload_id=%s (expires by itself)", lease.upload.id)
        lease.released = True
