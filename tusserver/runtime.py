"""Assembling a running server's parts from `Settings`: engine (migrated), records, storage, locks and
their keeper task, hooks, the upload service and the sweeper; and tearing them down. Used by
the ASGI lifespan and by the command line (`tusserver cleanup`). Knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from tusserver.config import Settings
from tusserver.core import Hook
from tusserver.database import make_engine, migrate
from tusserver.hooks import CallableHook, HookRunner, WebhookHook, load_callable
from tusserver.locking import UploadLocks, instance_name
from tusserver.policy import Policy
from tusserver.records import UploadRecords
from tusserver.storage import LocalStorage
from tusserver.sweeper import Sweeper
from tusserver.uploads import UploadService


@dataclass(frozen=True)
class Runtime:
    engine: AsyncEngine
    service: UploadService
    sweeper: Sweeper


def build_hooks(settings: Settings) -> list[Hook]:
    """The configured hooks; raises ValueError at start-up for a callable that cannot be loaded."""
    hooks: list[Hook] = []
    if settings.on_finish:
        hooks.append(CallableHook(load_callable(settings.on_finish)))
    if settings.webhook_url:
        hooks.append(WebhookHook(settings.webhook_url, settings.hook_timeout))
    return hooks


def policy_of(settings: Settings) -> Policy:
    def lifetime(seconds: float | None) -> timedelta | None:
        return None if seconds is None else timedelta(seconds=seconds)

    return Policy(
        max_size=settings.max_size,
        expire_after=lifetime(settings.expire_after),
        retain_finished=lifetime(settings.retain_finished),
        commit_every=settings.commit_interval,
        max_concat_parts=settings.max_concat_parts,
        keep_partials=settings.keep_partials,
    )


@asynccontextmanager
async def running(settings: Settings, hooks: Sequence[Hook] = ()) -> AsyncIterator[Runtime]:
    """Everything a server needs, with the lease keeper running; torn down in reverse on exit."""
    engine = make_engine(settings.resolved_database_url, settings.fsync, settings.database_timeout)
    runner = HookRunner(hooks)
    storage: LocalStorage | None = None
    records: UploadRecords | None = None
    keeper: asyncio.Task[None] | None = None
    try:
        await migrate(engine)
        records = UploadRecords(
            engine, settings.fsync, settings.database_timeout, settings.database_pool_size
        )
        locks = UploadLocks(records, instance_name(), settings.lock_ttl, settings.lock_timeout)
        _write_errors_instead_of_signals()
        storage = LocalStorage(settings.uploads_dir, settings.fsync, settings.min_free_space)
        service = UploadService(
            records, storage, locks, runner, policy_of(settings), settings.network_timeout
        )
        keeper = asyncio.create_task(locks.keep())
        yield Runtime(engine, service, Sweeper(records, storage, locks, settings.orphan_grace))
    finally:
        if keeper is not None:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
        await runner.aclose(settings.hook_timeout)
        if storage is not None:
            storage.close()
        if records is not None:
            await records.close()
        await engine.dispose()


def _write_errors_instead_of_signals() -> None:
    """A file size limit (RLIMIT_FSIZE) would kill the process with SIGXFSZ; ignored, the write fails
    with EFBIG instead and the request gets 507. Only the main thread may set it (embedders: best effort)."""
    with contextlib.suppress(ValueError, AttributeError):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
