"""Assembling a running server's parts from `Settings`: engine (migrated), records, storage, locks and
their keeper task, hooks and their dispatcher, the upload service and the sweeper; and tearing them
down. Used by the ASGI lifespan and by the command line (`tusserver cleanup`). Knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from tusserver.config import Settings
from tusserver.core import Storage
from tusserver.database import make_engine, migrate
from tusserver.events import BLOCKING, DURABLE, EventType
from tusserver.hooks import (
    BlockingHooks,
    Hooks,
    PythonHooks,
    Route,
    finish_routes,
    load_callable,
    load_object,
    parse_events,
)
from tusserver.locking import UploadLocks, instance_name
from tusserver.outbox import Dispatcher, Outbox
from tusserver.policy import Policy
from tusserver.records import UploadRecords
from tusserver.storage import make_storage
from tusserver.sweeper import Sweeper
from tusserver.uploads import UploadService


@dataclass(frozen=True)
class Runtime:
    engine: AsyncEngine
    service: UploadService
    sweeper: Sweeper


def build_hooks(settings: Settings, python_hooks: object | None = None) -> Hooks:
    """The configured hooks (plus `python_hooks`, an embedder's object); raises ValueError at
    start-up for a callable or object that cannot be loaded or an unknown event name."""
    on_finish = load_callable(settings.on_finish) if settings.on_finish else None
    routes = finish_routes(on_finish, settings.webhook_url, settings.hook_timeout, settings.hooks_secret)
    blocking: list[tuple[BlockingHooks, frozenset[EventType]]] = []
    progress: list[BlockingHooks] = []
    if settings.hooks_http:
        from tusserver.tusd_hooks import TusdHttpHooks  # httpx: loaded only when hooks are configured

        events = parse_events(settings.hooks_enabled_events)
        forward = [name.strip() for name in settings.hooks_http_forward_headers.split(",") if name.strip()]
        timeout = settings.hooks_http_timeout or settings.hook_timeout
        tusd = TusdHttpHooks(settings.hooks_http, timeout, settings.hooks_secret, forward)
        if events & DURABLE:
            routes["hooks-http"] = Route(tusd, events & DURABLE)
        blocking.append((tusd, events & BLOCKING))
        if EventType.POST_RECEIVE in events:
            progress.append(tusd)
    if python_hooks is None and settings.hooks_python:
        python_hooks = load_object(settings.hooks_python)
    if python_hooks is not None:
        python = PythonHooks(python_hooks, settings.hook_timeout)
        if python.events & DURABLE:
            routes["python"] = Route(python, python.events & DURABLE)
        blocking.append((python, python.events & BLOCKING))
        if EventType.POST_RECEIVE in python.events:
            progress.append(python)
    return Hooks(routes, blocking, progress, settings.progress_interval)


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
async def running(settings: Settings, hooks: Hooks | None = None) -> AsyncIterator[Runtime]:
    """Everything a server needs, with the lease keeper and the hook dispatcher running; torn down
    in reverse on exit."""
    engine = make_engine(settings.resolved_database_url, settings.fsync, settings.database_timeout)
    hooks = hooks if hooks is not None else Hooks()
    storage: Storage | None = None
    records: UploadRecords | None = None
    keeper: asyncio.Task[None] | None = None
    dispatcher: Dispatcher | None = None
    dispatching: asyncio.Task[None] | None = None
    try:
        await migrate(engine)
        records = UploadRecords(
            engine, settings.fsync, settings.database_timeout, settings.database_pool_size
        )
        locks = UploadLocks(records, instance_name(), settings.lock_ttl, settings.lock_timeout)
        _write_errors_instead_of_signals()
        storage = make_storage(settings)
        service = UploadService(records, storage, locks, hooks, policy_of(settings), settings.network_timeout)
        keeper = asyncio.create_task(locks.keep())
        if hooks.routes:
            dispatcher = Dispatcher(
                Outbox(records.runner),
                hooks.sinks,
                locks.new_owner(),
                settings.hook_timeout,
                timedelta(seconds=settings.hooks_max_age),
                settings.hooks_backoff_max,
            )
            hooks.attach(dispatcher)
            dispatching = asyncio.create_task(dispatcher.run())
        yield Runtime(
            engine,
            service,
            Sweeper(records, storage, locks, settings.orphan_grace, finish=service.pipeline.finish),
        )
    finally:
        if dispatcher is not None:
            await dispatcher.aclose(settings.hook_timeout)  # what is left is delivered on next start
        for task in (dispatching, keeper):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await hooks.aclose()
        if storage is not None:
            await storage.aclose()
        if records is not None:
            await records.close()
        await engine.dispose()


def _write_errors_instead_of_signals() -> None:
    """A file size limit (RLIMIT_FSIZE) would kill the process with SIGXFSZ; ignored, the write fails
    with EFBIG instead and the request gets 507. Only the main thread may set it (embedders: best effort)."""
    with contextlib.suppress(ValueError, AttributeError):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
