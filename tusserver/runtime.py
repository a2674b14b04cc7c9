"""Assembling a running server's parts from `Settings`: engine (migrated), store, storage, locks,
hooks, the upload service and the expiry sweeper; and tearing them down. Used by the ASGI lifespan and
by the command line (`tusserver cleanup`). Knows nothing of HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from tusserver.config import Settings
from tusserver.core import Hook
from tusserver.database import make_engine, migrate
from tusserver.expiry import ExpirySweeper
from tusserver.hooks import CallableHook, HookRunner, WebhookHook, load_callable
from tusserver.locking import UploadLocks, instance_name
from tusserver.policy import Policy
from tusserver.storage import LocalStorage
from tusserver.store import SqlUploadStore
from tusserver.uploads import UploadService


@dataclass(frozen=True)
class Runtime:
    engine: AsyncEngine
    service: UploadService
    sweeper: ExpirySweeper


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
    )


@asynccontextmanager
async def running(settings: Settings, hooks: Sequence[Hook] = ()) -> AsyncIterator[Runtime]:
    engine = make_engine(settings.resolved_database_url)
    runner = HookRunner(hooks)
    try:
        await migrate(engine)
        store = SqlUploadStore(engine)
        locks = UploadLocks(store, instance_name(), settings.lock_ttl, settings.lock_timeout)
        storage = LocalStorage(settings.uploads_dir, fsync=settings.fsync)
        service = UploadService(store, storage, locks, runner, policy_of(settings))
        yield Runtime(engine, service, ExpirySweeper(store, storage, locks))
    finally:
        await runner.aclose(settings.hook_timeout)
        await engine.dispose()
