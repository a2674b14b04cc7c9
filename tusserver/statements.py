"""Running one SQL statement as cheaply as each database allows, and translating its failures.

Every query of `records.py` is a single statement in a transaction of its own, so the runners only
need `run(statement)`:

- `SqliteRunner`: one pysqlite connection used on the event loop. A primary-key statement on SQLite
  in WAL mode costs tens of microseconds, where a thread hop per call (aiosqlite: five or six per
  transaction) costs milliseconds under load. The database lock is never waited for on the loop:
  `busy_timeout` is 0 and a busy database is retried after an `asyncio.sleep` with backoff (other
  processes, `--workers`, may hold it). WAL checkpoints, which fsync, run in a thread every few
  seconds instead of inside a commit on the loop. With `--fsync` every commit fsyncs, so then the
  statements run in one database thread instead (one hop per statement).
- `AsyncRunner` (PostgreSQL): autocommitted statements on the async engine, one network round trip
  each instead of BEGIN + statement + COMMIT.

Connection-class failures become `ServiceUnavailable` (503 + Retry-After) here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from tusserver.errors import ServiceUnavailable

log = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = "5"
BUSY_PATIENCE = 10.0
"""Seconds a statement retries a database locked by another process before answering 503."""
CHECKPOINT_EVERY = 5.0
_UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, OSError)


@dataclass(frozen=True)
class Ran:
    """What a statement gave back: its rows (RETURNING or SELECT) and how many rows it changed."""

    rows: Sequence[Any]
    """`sqlalchemy.Row`s, or rows that read the same way (`row.name`, `row._mapping`)."""
    rowcount: int


Params = dict[str, Any]


class StatementRunner(Protocol):
    async def run(self, statement: sa.Executable, params: Params | None = None) -> Ran: ...

    async def close(self) -> None: ...


def unavailable(exc: BaseException) -> ServiceUnavailable:
    log.warning("database_unavailable error=%s", type(exc).__name__)
    return ServiceUnavailable("database unavailable, retry later", {"Retry-After": RETRY_AFTER_SECONDS})


class AsyncRunner:
    """Autocommitted statements on an async engine (PostgreSQL through asyncpg). It keeps a pool of
    its own, made autocommit once for good: no isolation level set and reset, and no ROLLBACK, per
    checkout (measured: 212 -> 185 µs a primary-key SELECT on loopback)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = create_async_engine(
            engine.url,
            isolation_level="AUTOCOMMIT",
            skip_autocommit_rollback=True,
            pool_size=10,
            max_overflow=20,
            pool_recycle=1800,
        )

    async def run(self, statement: sa.Executable, params: Params | None = None) -> Ran:
        try:
            async with self._engine.connect() as connection:
                result = await connection.execute(statement, params)
                rows = result.all() if result.returns_rows else []
                return Ran(rows, result.rowcount)
        except _UNAVAILABLE as exc:
            raise unavailable(exc) from exc

    async def close(self) -> None:
        await self._engine.dispose()


class SqliteRunner:
    """SQLite on the event loop (or in one database thread with `fsync`); see the module docstring."""

    def __init__(self, database: str, fsync: bool = False) -> None:
        self._engine = sa.create_engine(
            f"sqlite+pysqlite:///{database}",
            poolclass=StaticPool,
            connect_args={"check_same_thread": False},
        )
        sa.event.listen(self._engine, "connect", _tune("FULL" if fsync else "NORMAL"))
        self._database = database
        self._connection: sa.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="tusserver-db") if fsync else None
        self._checkpointer: asyncio.Task[None] | None = None

    async def run(self, statement: sa.Executable, params: Params | None = None) -> Ran:
        self._start_checkpoints()
        deadline = time.monotonic() + BUSY_PATIENCE
        delay = 0.001
        while True:
            try:
                if self._thread is None:
                    return self._run_now(statement, params)
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._thread, self._run_now, statement, params)
            except sa.exc.OperationalError as exc:
                if not _busy(exc) or time.monotonic() + delay > deadline:
                    raise unavailable(exc) from exc
            except _UNAVAILABLE as exc:
                raise unavailable(exc) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _run_now(self, statement: sa.Executable, params: Params | None) -> Ran:
        if self._connection is None:
            self._connection = self._engine.connect()
        connection = self._connection
        try:
            result = connection.execute(statement, params)
            rows = result.all() if result.returns_rows else []
            count = len(rows) if rows else result.rowcount
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
        return Ran(rows, count)

    def _start_checkpoints(self) -> None:
        if self._checkpointer is None:
            self._checkpointer = asyncio.create_task(self._checkpoint_now_and_then())

    async def _checkpoint_now_and_then(self) -> None:
        """Copy the WAL into the database every few seconds, in a thread: it fsyncs."""
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY)
            try:
                await asyncio.to_thread(_checkpoint, self._database)
            except sqlite3.Error as exc:
                log.warning("sqlite_checkpoint_failed error=%s", exc)

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
        if self._connection is not None:
            self._connection.close()
        self._engine.dispose()
        if self._thread is not None:
            self._thread.shutdown(wait=True)


def _tune(synchronous: str) -> Callable[[Any, object], None]:
    pragmas = ("journal_mode=WAL", f"synchronous={synchronous}", "busy_timeout=0", "wal_autocheckpoint=0")

    def tune(dbapi_connection: Any, _record: object) -> None:
        cursor = dbapi_connection.cursor()
        for pragma in pragmas:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    return tune


def _busy(exc: sa.exc.OperationalError) -> bool:
    return "locked" in str(exc.orig) or "busy" in str(exc.orig)


def _checkpoint(database: str) -> None:
    with contextlib.closing(sqlite3.connect(database, timeout=1)) as connection:
        connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
