"""Metrics computed at scrape time rather than counted: from the database (incomplete uploads, their
bytes, the oldest one's age, expired ones not deleted yet, the hook backlog), from the disk (size,
free, used, reserve) and readiness. The database part is one aggregate query per table, run at most
every `REFRESH_SECONDS` whatever the number of scrapes, never per request; when it fails the last
values stay and `tusserver_database_up` says 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from tusserver import metrics
from tusserver.core import utcnow
from tusserver.health import Readiness, Report
from tusserver.outbox import DEAD, PENDING, Outbox
from tusserver.records import Summary, UploadRecords
from tusserver.storage import LocalStorage

log = logging.getLogger(__name__)
REFRESH_SECONDS = 5.0


@dataclass(frozen=True)
class Disk:
    size: int
    free: int
    available: int
    reserve: int


@dataclass
class State:
    """The last values read; `summary` and `backlog` stay None until a first query succeeds."""

    summary: Summary | None = None
    backlog: dict[str, int] | None = None
    database_up: bool = False
    disk: Disk | None = None
    ready: Report | None = None


class Observer:
    """Holds the cached state of one server process and turns it into metric families."""

    def __init__(self, records: UploadRecords, storage: object, readiness: Readiness) -> None:
        self._records = records
        self._outbox = Outbox(records.runner)
        self._storage = storage if isinstance(storage, LocalStorage) else None
        self.readiness = readiness
        self.state = State()
        self._refreshed_at = -REFRESH_SECONDS
        self._lock = asyncio.Lock()

    async def refresh(self) -> State:
        """Bring the state up to date: the database part if older than `REFRESH_SECONDS`."""
        async with self._lock:
            state = self.state
            state.ready = await self.readiness.check()
            state.disk = await asyncio.to_thread(self._disk)
            if time.monotonic() - self._refreshed_at >= REFRESH_SECONDS:
                self._refreshed_at = time.monotonic()
                await self._query(state)
            return state

    async def _query(self, state: State) -> None:
        if state.ready is not None and "database" in state.ready.failed:
            state.database_up = False  # no need to wait for it a second time
            return
        try:
            state.summary = await self._records.summary(utcnow())
            state.backlog = await self._outbox.backlog()
            state.database_up = True
        except Exception as exc:
            state.database_up = False
            log.warning("metrics_query_failed error=%s", type(exc).__name__)

    def _disk(self) -> Disk | None:
        if self._storage is None:
            return None
        stat = os.statvfs(self._storage.directory)
        return Disk(
            size=stat.f_blocks * stat.f_frsize,
            free=stat.f_bfree * stat.f_frsize,
            available=stat.f_bavail * stat.f_frsize,
            reserve=self._storage.reserve,
        )

    async def sample(self, every: float = 2.0) -> None:
        """Until cancelled: copy the pool's checked-out count into its gauge every `every` seconds
        (a gauge per process, summed over workers)."""
        while True:
            metrics.database_pool_in_use.set(self._records.pool_in_use())
            await asyncio.sleep(every)

    def registry(self) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_StateCollector(self.state))
        return registry


class _StateCollector(Collector):
    def __init__(self, state: State) -> None:
        self._state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self._state

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"tusserver_{name}", text, value=value)

        yield gauge("database_up", "1 if the last metrics query reached the database.", state.database_up)
        if state.ready is not None:
            yield gauge("ready", "1 if this instance passes its readiness checks.", state.ready.ready)
            checks = GaugeMetricFamily(
                "tusserver_ready_check", "1 per readiness check that passes.", labels=["check"]
            )
            for name, check in state.ready.checks.items():
                checks.add_metric([name], 1.0 if check["ok"] else 0.0)
            yield checks
        for name, text, value in _values(state):
            yield gauge(name, text, value)
        if state.backlog is not None:
            events = GaugeMetricFamily(
                "tusserver_hook_events",
                "Durable hook events waiting (pending) or given up (dead).",
                labels=["state"],
            )
            for name in (PENDING, DEAD):
                events.add_metric([name], state.backlog.get(name, 0))
            yield events


def _values(state: State) -> list[tuple[str, str, float]]:
    """(name, help, value) of the plain gauges the state has values for."""
    values: list[tuple[str, str, float]] = []
    summary, disk = state.summary, state.disk
    if summary is not None:
        oldest = summary.oldest_incomplete
        values += [
            ("incomplete_uploads", "Uploads created and not finished (database).", summary.incomplete),
            ("incomplete_upload_bytes", "Bytes committed by unfinished uploads.", summary.incomplete_bytes),
            ("oldest_incomplete_upload_age_seconds", "Age of the oldest unfinished upload.",
             (utcnow() - oldest).total_seconds() if oldest else 0.0),
            ("expired_uploads_pending", "Expired uploads not deleted yet.", summary.expired),
            ("stored_upload_bytes", "Bytes committed by every upload (database).", summary.stored_bytes),
        ]  # fmt: skip
    if disk is not None:
        values += [
            ("storage_size_bytes", "Size of the data directory's file system.", disk.size),
            ("storage_free_bytes", "Bytes available on the data directory's file system.", disk.available),
            ("storage_used_bytes", "Used bytes of the data directory's file system.", disk.size - disk.free),
            ("storage_reserve_bytes", "The --min-free-space reserve, in bytes.", disk.reserve),
        ]
    return values
