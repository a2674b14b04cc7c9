"""Readiness: can this instance take uploads now? The database answers, the data directory takes a
write, and its free space is above the `--min-free-space` reserve. `Readiness.check` runs the three
checks (at most once a second; probes and scrapes share the answer) and says what failed.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tusserver.records import UploadRecords
from tusserver.storage import LocalStorage

CACHE_SECONDS = 1.0
DATABASE_PATIENCE = 2.0
"""Seconds the database check waits at most (a blackholed database must not hang the probe)."""


@dataclass(frozen=True)
class Report:
    """The outcome of the checks: `failed` names the checks that did not pass."""

    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        return [name for name, check in self.checks.items() if not check["ok"]]

    @property
    def ready(self) -> bool:
        return not self.failed

    def as_json(self) -> dict[str, Any]:
        return {
            "status": "ready" if self.ready else "unavailable",
            "failed": self.failed,
            "checks": self.checks,
        }


class Readiness:
    def __init__(self, records: UploadRecords, storage: object, database_timeout: float) -> None:
        self._records = records
        self._storage = storage if isinstance(storage, LocalStorage) else None
        self._patience = min(DATABASE_PATIENCE, database_timeout)
        self._last: Report | None = None
        self._checked_at = 0.0
        self._lock = asyncio.Lock()

    async def check(self) -> Report:
        async with self._lock:  # probes arriving together run the checks once
            if self._last is None or time.monotonic() - self._checked_at >= CACHE_SECONDS:
                self._last = Report({"database": await self._database(), **await self._disk()})
                self._checked_at = time.monotonic()
            return self._last

    async def _database(self) -> dict[str, Any]:
        try:
            async with asyncio.timeout(self._patience):
                await self._records.ping()
        except TimeoutError:
            return {"ok": False, "error": f"no answer within {self._patience:g} s"}
        except Exception as exc:
            return {"ok": False, "error": _short(exc)}
        return {"ok": True}

    async def _disk(self) -> dict[str, dict[str, Any]]:
        storage = self._storage
        if storage is None:
            return {}
        try:
            await asyncio.to_thread(_write_probe, storage.directory)
            writable: dict[str, Any] = {"ok": True}
        except OSError as exc:
            writable = {"ok": False, "error": _short(exc)}
        try:
            free = await asyncio.to_thread(storage.free_bytes)
        except OSError as exc:
            return {"storage": writable, "free_space": {"ok": False, "error": _short(exc)}}
        space = {"ok": free > 0, "free_bytes_above_reserve": free, "reserve_bytes": storage.reserve}
        return {"storage": writable, "free_space": space}


def _write_probe(directory: Path) -> None:
    """Create, write, sync and remove a small file (its name is no upload ID: sweeps ignore it)."""
    path = directory / f".ready-{os.getpid()}"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(descriptor, b"ok")
    finally:
        os.close(descriptor)
        path.unlink(missing_ok=True)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200]
