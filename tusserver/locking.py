"""Per-upload locks that hold across processes and hosts: leases on the upload row.

A request takes the lease with one conditional UPDATE (`UploadRecords.acquire`). One keeper task per
instance renews every lease this instance holds in a single statement a second (a checkpoint commit
renews its own lease too), and the lease is released in `finally` or by the final offset commit. A
lease that is not renewed expires after `ttl` seconds by the database's clock, so a killed process never
wedges an upload.

A lease is a small state machine (`LeaseState`): HELD, then at most one reason to stop early
(TAKEOVER by another request, SHUTDOWN of this process, TIMED_OUT client, LOST lease, STOPPED by a
post-receive hook), then RELEASED.
The writer is told through `Lease.on_stop`. A request that finds an upload taken asks the holder to let
go (directly when the holder runs in this process, through `release_requested` in the row otherwise)
and waits, on the holder's release event or by polling the row with backoff, for up to `wait_timeout`
seconds before answering 423. So a client that reconnects after a dropped connection, to any instance,
resumes within about a second instead of waiting for a stalled request to time out.

Fencing: a lease is trusted for writing bytes only until `ttl - margin` seconds after the last renewal
was *sent*; the database cannot expire it before `ttl` seconds after it arrived. A writer that stalls
past that stops before touching storage, so a stale writer never overwrites bytes another one committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tusserver import metrics
from tusserver.core import Upload
from tusserver.errors import ServiceUnavailable, UploadLocked, UploadStopped
from tusserver.records import UploadRecords

log = logging.getLogger(__name__)
RENEW_EVERY = 1.0
"""Seconds between renewals at most: also how fast a holder on another instance notices a takeover."""


def instance_name() -> str:
    """Identifies this process in lock owners: host, PID and a random tag."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(8)}"


class LeaseState(enum.Enum):
    HELD = "held"
    TAKEOVER = "takeover"
    """Another request asked for the upload: stop, commit what arrived, answer 409."""
    SHUTDOWN = "shutdown"
    """This process is stopping: stop, commit what arrived, answer 503."""
    TIMED_OUT = "timed_out"
    """The client sent nothing for the network timeout: stop, commit what arrived, answer 408."""
    LOST = "lost"
    """The lease is gone or can no longer be trusted: stop before another byte reaches storage."""
    STOPPED = "stopped"
    """A post-receive hook stopped the upload: stop, answer with `Lease.stopped_by`, terminate it."""
    RELEASED = "released"


_S = LeaseState
_LEGAL: dict[LeaseState, frozenset[LeaseState]] = {
    _S.HELD: frozenset({_S.TAKEOVER, _S.SHUTDOWN, _S.TIMED_OUT, _S.LOST, _S.STOPPED, _S.RELEASED}),
    _S.STOPPED: frozenset({_S.LOST, _S.RELEASED}),
    _S.TAKEOVER: frozenset({_S.SHUTDOWN, _S.LOST, _S.RELEASED}),
    _S.TIMED_OUT: frozenset({_S.SHUTDOWN, _S.LOST, _S.RELEASED}),
    _S.SHUTDOWN: frozenset({_S.LOST, _S.RELEASED}),
    _S.LOST: frozenset({_S.RELEASED}),
    _S.RELEASED: frozenset(),
}
"""The legal transitions; anything else is ignored (a weaker reason never overrides a stronger one)."""


def _ignore(*_: object) -> None:
    return None


@dataclass(eq=False)
class Lease:
    """One request's hold on one upload."""

    upload: Upload
    owner: str
    ttl: float
    state: LeaseState = LeaseState.HELD
    trusted_until: float = 0.0
    """`time.monotonic()` after which this lease may have expired in the database."""
    on_stop: Callable[[], None] = _ignore
    """Called once when the lease leaves HELD for a reason to stop (the writer's interrupt)."""
    on_tick: Callable[[float], None] = _ignore
    """Called by the keeper about once a second with the monotonic time (idle and checkpoint checks)."""
    freed: asyncio.Event = field(default_factory=asyncio.Event)
    stopped_by: UploadStopped | None = None
    """The answer of a request whose upload a post-receive hook stopped (state STOPPED)."""
    releasing: bool = False
    """A statement that releases this lease in the database is under way: the keeper leaves the
    lease to it (a renewal could find the row released before this request has heard so, and would
    report a healthy lease as lost)."""

    def __post_init__(self) -> None:
        self.renewed(time.monotonic())

    def watch(self, on_stop: Callable[[], None], on_tick: Callable[[float], None]) -> None:
        """Let a writer hear of a reason to stop, and tick it about once a second."""
        self.on_stop, self.on_tick = on_stop, on_tick

    def unwatch(self) -> None:
        self.on_stop = self.on_tick = _ignore

    def move(self, to: LeaseState) -> bool:
        """Take the transition if it is legal; tell the writer when it means stopping."""
        if to not in _LEGAL[self.state]:
            return False
        self.state = to
        if to is LeaseState.RELEASED:
            self.freed.set()
        else:
            self.on_stop()
        return True

    @property
    def stopping(self) -> bool:
        return self.state is not LeaseState.HELD

    def renewed(self, sent_at: float) -> None:
        """A renewal (or an acquire, or a checkpoint) sent at monotonic `sent_at` succeeded."""
        self.trusted_until = sent_at + self.ttl - min(1.0, self.ttl / 4)

    def trusted(self, now: float) -> bool:
        """May this lease's holder still write bytes? False once lost or possibly expired."""
        if self.state is LeaseState.LOST:
            return False
        if now < self.trusted_until:
            return True
        self.move(LeaseState.LOST)
        return False


class UploadLocks:
    def __init__(self, records: UploadRecords, instance: str, ttl: float, wait_timeout: float) -> None:
        self._records = records
        self._instance = instance
        self.ttl = ttl
        self._wait_timeout = wait_timeout
        self._local: dict[str, Lease] = {}
        self._serials = itertools.count(1)
        self.shutting_down = False

    def new_owner(self) -> str:
        """A lease holder's name, unique to this process (whose name is unique to this start)."""
        return f"{self._instance}:{next(self._serials)}"

    def new_lease(self, upload: Upload) -> Lease:
        """A lease for an upload this request inserted already leased (creation-with-upload)."""
        return Lease(upload, self.new_owner(), self.ttl)

    def hold(self, upload_id: str) -> Held:
        """`async with locks.hold(upload_id) as lease`: lease an existing upload for the duration of
        the block (taking it over if need be)."""
        return Held(self, upload_id)

    def kept(self, lease: Lease) -> Kept:
        """`async with locks.kept(lease)`: keep an acquired lease renewed by the keeper; release it
        on exit unless already released."""
        return Kept(self, lease)

    def _keep(self, lease: Lease) -> None:
        self._local[lease.upload.id] = lease
        if self.shutting_down:
            lease.move(LeaseState.SHUTDOWN)

    async def _let_go(self, lease: Lease) -> None:
        if self._local.get(lease.upload.id) is lease:
            del self._local[lease.upload.id]
        if lease.state is not LeaseState.RELEASED:
            await self._release_quietly(lease)

    async def wait_until_free(self, upload_id: str) -> Upload:
        """For status requests: ask a holder to let go and wait (bounded) so that the offset read
        afterwards includes what the holder received. Returns the upload as committed then."""
        local = self._local.get(upload_id)
        if local is not None:
            await self._take_from_local(local, time.monotonic() + self._wait_timeout)
        upload, held = await self._records.get_with_lock(upload_id)
        if not held:
            return upload
        await self._records.request_release(upload_id)
        deadline = time.monotonic() + self._wait_timeout
        delay = 0.005
        while held and time.monotonic() + delay < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
            upload, held = await self._records.get_with_lock(upload_id)
        return upload  # still held after the wait: its committed offset is still a valid answer

    def stop(self, upload_id: str, answer: UploadStopped) -> bool:
        """A post-receive hook stopped the upload: if a request of this process is writing it, it
        ends with `answer` (and the upload is terminated). False if none is."""
        lease = self._local.get(upload_id)
        if lease is None or lease.state is not LeaseState.HELD:
            return False
        lease.stopped_by = answer
        return lease.move(LeaseState.STOPPED)

    def stop_all(self) -> None:
        """Shutdown: ask every request of this process that holds a lease to finish early, and every
        request that comes later to stop at once."""
        self.shutting_down = True
        for lease in list(self._local.values()):
            lease.move(LeaseState.SHUTDOWN)

    async def _take_from_local(self, holder: Lease, deadline: float) -> None:
        """Same process: tell the holder directly and wait for its release event."""
        if holder.move(LeaseState.TAKEOVER):
            metrics.lock_takeovers.inc()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                await holder.freed.wait()

    async def _acquire(self, upload_id: str) -> Lease:
        owner = self.new_owner()
        deadline = time.monotonic() + self._wait_timeout
        delay = 0.005
        asked = waited = False
        while True:
            local = self._local.get(upload_id)
            if local is not None:
                if not waited:
                    metrics.lock_waits.inc()  # once per request that had to wait for someone
                    waited = True
                await self._take_from_local(local, deadline)
            sent_at = time.monotonic()
            ask = not asked and local is None
            upload = await self._records.acquire(upload_id, owner, self.ttl, ask)
            if upload is not None:
                lease = Lease(upload, owner, self.ttl)
                lease.renewed(sent_at)
                return lease
            if not waited:
                metrics.lock_waits.inc()
                waited = True
            if ask:
                metrics.lock_takeovers.inc()
            asked = True
            if time.monotonic() + delay > deadline:
                raise UploadLocked("upload is busy with another request, retry later")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def keep(self) -> None:
        """The keeper: renew this instance's leases about once a second until cancelled."""
        while True:
            await asyncio.sleep(min(self.ttl / 3, RENEW_EVERY))
            try:
                await self.beat()
            except Exception:  # a keeper that died would let every lease of this instance lapse
                log.exception("lease_keeper_beat_failed")

    async def beat(self) -> None:
        leases = [
            lease
            for lease in self._local.values()
            if lease.state is not LeaseState.RELEASED and not lease.releasing
        ]
        if leases:
            await self._renew(leases)
        now = time.monotonic()
        for lease in leases:
            lease.on_tick(now)

    async def _renew(self, leases: list[Lease]) -> None:
        sent_at = time.monotonic()
        try:
            held = [(lease.upload.id, lease.owner) for lease in leases]
            answers = await self._records.renew(held, self.ttl)
        except ServiceUnavailable:
            for lease in leases:  # it may still be valid; trusted() says when it no longer is
                lease.trusted(time.monotonic())
            return
        for lease in leases:
            if lease.releasing:
                continue  # its release began while the renewal was under way: that decides
            if lease.owner not in answers:
                if lease.move(LeaseState.LOST):
                    log.warning("lock_lost upload_id=%s owner=%s", lease.upload.id, lease.owner)
                continue
            lease.renewed(sent_at)
            if answers[lease.owner] and lease.move(LeaseState.TAKEOVER):
                log.info("lock_release_requested upload_id=%s", lease.upload.id)

    async def _release_quietly(self, lease: Lease) -> None:
        lease.releasing = True
        try:
            await self._records.release(lease.upload.id, lease.owner)
        except ServiceUnavailable:
            log.warning("lock_release_failed upload_id=%s (expires by itself)", lease.upload.id)
        lease.move(LeaseState.RELEASED)


class Kept:
    """The block of `UploadLocks.kept`. Context managers of their own rather than
    `contextlib.asynccontextmanager`'s: every PATCH enters two, and an async generator hands over
    each step by raising an exception (4.6 % of a short PATCH's instructions, counted with
    callgrind)."""

    __slots__ = ("_lease", "_locks")

    def __init__(self, locks: UploadLocks, lease: Lease) -> None:
        self._locks = locks
        self._lease = lease

    async def __aenter__(self) -> Lease:
        self._locks._keep(self._lease)
        return self._lease

    async def __aexit__(self, *exc_info: object) -> None:
        await self._locks._let_go(self._lease)


class Held:
    """The block of `UploadLocks.hold`: the lease is taken on entry and let go on exit."""

    __slots__ = ("_lease", "_locks", "_upload_id")

    def __init__(self, locks: UploadLocks, upload_id: str) -> None:
        self._locks = locks
        self._upload_id = upload_id
        self._lease: Lease | None = None

    async def __aenter__(self) -> Lease:
        locks = self._locks
        if locks.shutting_down:
            raise ServiceUnavailable("server shutting down, retry", {"Retry-After": "1"})
        lease = self._lease = await locks._acquire(self._upload_id)
        locks._keep(lease)
        return lease

    async def __aexit__(self, *exc_info: object) -> None:
        if self._lease is not None:
            await self._locks._let_go(self._lease)
