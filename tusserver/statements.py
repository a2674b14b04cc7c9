"""Running one SQL statement as cheaply as each database allows, and translating its failures.

Every query of `records.py` is a single statement in a transaction of its own (or a guarded one with
the hook events it causes), so the runners only need `run(statement)` and `run_guarded`:

- `SqliteRunner`: one pysqlite connection used on the event loop. A primary-key statement on SQLite
  in WAL mode costs tens of microseconds, where a thread hop per call (aiosqlite: five or six per
  transaction) costs milliseconds under load. The statements every request runs are compiled once
  and run on the driver itself (`prepared.py`: 22 µs for a primary-key SELECT against 42 µs through
  SQLAlchemy's execution layer). The database lock is never waited for on the loop:
  `busy_timeout` is 0 and a busy database is retried after an `asyncio.sleep` with backoff (other
  processes, `--workers`, may hold it). WAL checkpoints, which fsync, run in a thread every second
  instead of inside a commit on the loop, and make the WAL start over even under a steady stream of
  writes (`_copy_wal`, `_restart_wal`); the writes that the restart holds off wait for its end.
  The writes of a few loop turns commit together (`commit_groups.py`, `sqlite_groups.py`). With
  `--fsync` every commit fsyncs, so then the statements run in one database thread instead (one hop
  per read, one per group of writes).
- PostgreSQL: `pg_direct.py`.

Only failures of the database as a service become `ServiceUnavailable` (503 + Retry-After): it cannot
be reached, is locked for too long, cannot read or write its files (507 when its disk is full). An
error in the SQL itself (no such column, a syntax error: a bug or a schema that does not match) is
not an outage and is not disguised as one: it propagates, and the request answers 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.dml import UpdateBase

from tusserver.commit_groups import (
    AwaitedCommitGroups,
    CommitGroups,
    LoopCommitGroups,
    Members,
    Outcomes,
    PlannedStep,
    Regroup,
)
from tusserver.errors import ServiceUnavailable, StorageFull
from tusserver.prepared import Params, Ran, plan
from tusserver.sqlite_groups import run_group, run_steps

log = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = "5"
BUSY_PATIENCE = 10.0
"""Seconds a statement retries a database locked by another process before answering 503."""
CHECKPOINT_EVERY = 1.0
"""Seconds between WAL checkpoints while statements run (none while the database is idle)."""
WAL_SIZE_LIMIT = 64 * 1024 * 1024
"""Bytes the WAL file is cut back to when it starts over (SQLite keeps the file's size otherwise)."""
MINIMUM_SQLITE = (3, 35, 0)
"""The oldest SQLite library whose SQL this release uses (UPDATE ... RETURNING)."""
# Primary result codes (https://sqlite.org/rescode.html); extended codes keep them in the low byte.
_SQLITE_BUSY = frozenset({5, 6})  # BUSY, LOCKED: another connection has it; retried
_SQLITE_FULL = 13
_SQLITE_OUTAGE = frozenset({7, 8, 10, 11, 14, 15, 26})
"""NOMEM, READONLY, IOERR, CORRUPT, CANTOPEN, PROTOCOL, NOTADB: the database file cannot be used."""


Step = tuple[sa.Executable, Params]


class StatementRunner(Protocol):
    async def run(self, statement: sa.Executable, params: Params | None = None) -> Ran: ...

    async def run_guarded(self, guard: Step, follow: Sequence[Step]) -> Ran:
        """`guard`, then, only if it changed or returned a row, `follow`, all in one transaction:
        a state change and the hook events it causes commit together or not at all."""
        ...

    async def close(self) -> None: ...


def unavailable(exc: BaseException) -> ServiceUnavailable:
    log.warning("database_unavailable error=%s detail=%s", type(exc).__name__, str(exc).splitlines()[:1])
    return ServiceUnavailable("database unavailable, retry later", {"Retry-After": RETRY_AFTER_SECONDS})


def sqlite_library_problem() -> str | None:
    """Why the SQLite library this Python links cannot run our SQL, or None if it can."""
    if sqlite3.sqlite_version_info >= MINIMUM_SQLITE:
        return None
    needed = ".".join(map(str, MINIMUM_SQLITE))
    return f"SQLite {sqlite3.sqlite_version} is too old: tusserver needs {needed} or newer"


def _sqlite_code(exc: sa.exc.DBAPIError | sqlite3.Error) -> int | None:
    error = getattr(exc, "orig", exc)  # SQLAlchemy's wrapper, or pysqlite's own error
    code = getattr(error, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


class SqliteRunner:
    """SQLite on the event loop (or in one database thread with `fsync`); see the module docstring."""

    def __init__(self, database: str, fsync: bool = False, prepared: Sequence[sa.Executable] = ()) -> None:
        self._engine = sa.create_engine(
            f"sqlite+pysqlite:///{database}",
            poolclass=StaticPool,
            connect_args={"check_same_thread": False},
        )
        sa.event.listen(self._engine, "connect", _tune("FULL" if fsync else "NORMAL"))
        sqlite3.register_adapter(type(None), _null)
        sa.event.listen(self._engine, "begin", _begin)
        self._database = database
        self._connection: sa.Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="tusserver-db") if fsync else None
        self._checkpointer: asyncio.Task[None] | None = None
        self._restarting: asyncio.Future[None] | None = None
        self._statements_since_checkpoint = 0
        self._plans = {id(statement): plan(statement, self._engine.dialect) for statement in prepared}
        self._writes = frozenset(id(statement) for statement in prepared if isinstance(statement, UpdateBase))
        self._groups: CommitGroups = (
            AwaitedCommitGroups(self._run_group_in_thread, one_at_a_time=True, turns=1)  # fsyncs batch them
            if fsync
            else LoopCommitGroups(self._run_group)
        )

    async def run(self, statement: sa.Executable, params: Params | None = None) -> Ran:
        return await self._patiently((statement, params or {}), ())

    async def run_guarded(self, guard: Step, follow: Sequence[Step]) -> Ran:
        return await self._patiently(guard, follow)

    async def _patiently(self, guard: Step, follow: Sequence[Step]) -> Ran:
        """Run now (a write: with the others of its group's loop turns, `sqlite_groups.py`), retrying while
        another process holds the database lock, up to BUSY_PATIENCE."""
        self._start_checkpoints()
        self._statements_since_checkpoint += 1
        grouped = self._planned_write(guard, follow)
        deadline = time.monotonic() + BUSY_PATIENCE
        retries = 0
        while True:
            try:
                if grouped is not None:
                    try:
                        return await self._groups.submit(grouped)
                    except Regroup:
                        if not await self._restarted():
                            grouped = None  # each request alone, to meet its own error
                        continue  # held off by our own checkpoint: group again after it
                if self._thread is None:
                    return self._run_now(guard, follow)
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._thread, self._run_now, guard, follow)
            except (sa.exc.DBAPIError, sqlite3.Error) as exc:
                code = _sqlite_code(exc)
                if code == _SQLITE_FULL:
                    log.warning("database_full error=%s", getattr(exc, "orig", exc))
                    raise StorageFull("the database's disk is full") from exc
                if code in _SQLITE_OUTAGE or (code in _SQLITE_BUSY and time.monotonic() > deadline):
                    raise unavailable(exc) from exc
                if code not in _SQLITE_BUSY:
                    raise  # an error in the SQL: a bug, not an outage
                if await self._restarted():
                    continue
            except OSError as exc:
                raise unavailable(exc) from exc
            await asyncio.sleep(_busy_delay(retries))
            retries += 1

    async def _restarted(self) -> bool:
        """If our own checkpoint is starting the WAL over (holding writers off, a few milliseconds),
        wait until it has: True. The writes it held off then go on at once, together, instead of
        each polling with backoff (which let a write in up to 4 ms after the restart had ended)."""
        restarting = self._restarting
        if restarting is None:
            return False
        await asyncio.shield(restarting)
        return True

    def _planned_write(self, guard: Step, follow: Sequence[Step]) -> list[PlannedStep] | None:
        """A write whose steps are all prepared, as the plans a commit group runs; else None."""
        if id(guard[0]) not in self._writes:
            return None
        steps = []
        for statement, params in (guard, *follow):
            prepared = self._plans.get(id(statement))
            if prepared is None:
                return None
            steps.append((prepared, params))
        return steps

    def _connected(self) -> sa.Connection:
        if self._connection is None:
            self._connection = self._engine.connect()
        return self._connection

    def _raw(self) -> Any:
        """The pysqlite connection itself."""
        return self._connected().connection.dbapi_connection

    def _run_group(self, members: Members) -> Outcomes:
        return run_group(self._raw(), members)

    async def _run_group_in_thread(self, members: Members) -> Outcomes:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._run_group, members)

    def _run_now(self, guard: Step, follow: Sequence[Step]) -> Ran:
        statement, params = guard
        if not follow and (prepared := self._plans.get(id(statement))) is not None:  # most requests
            return run_steps(self._raw(), ((prepared, params),))
        plans = [self._plans.get(id(statement)) for statement, _ in (guard, *follow)]
        if all(plans):
            steps = [(p, params) for p, (_, params) in zip(plans, (guard, *follow), strict=True) if p]
            return run_steps(self._raw(), steps)
        connection = self._connected()
        try:
            result = connection.execute(*guard)
            rows = result.all() if result.returns_rows else []
            count = len(rows) if rows else result.rowcount
            if count:
                for step in follow:
                    connection.execute(*step)
            connection.commit()
        except BaseException:
            connection.rollback()
            raise
        return Ran(rows, count)

    def _start_checkpoints(self) -> None:
        if self._checkpointer is None:
            self._checkpointer = asyncio.create_task(self._checkpoint_now_and_then())

    async def _checkpoint_now_and_then(self) -> None:
        """Copy the WAL into the database every second statements ran, in a thread: it fsyncs."""
        while True:
            await asyncio.sleep(CHECKPOINT_EVERY)
            if not self._statements_since_checkpoint:
                continue
            self._statements_since_checkpoint = 0
            try:
                await asyncio.to_thread(_copy_wal, self._database)
                self._restarting = asyncio.get_running_loop().create_future()
                try:
                    await asyncio.to_thread(_restart_wal, self._database)
                finally:
                    self._restarting.set_result(None)
                    self._restarting = None
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


def _busy_delay(retries: int) -> float:
    """Seconds to wait before retrying a statement another process kept out: another process holds
    the write lock for tens of microseconds a statement, so the first two retries only let the
    requests that are ready go first; then 1, 2, 4 ... 50 ms (a checkpoint, a long transaction)."""
    return 0.0 if retries < 2 else min(0.001 * 2 ** (retries - 2), 0.05)


def _tune(synchronous: str) -> Callable[[Any, object], None]:
    """Autocommit (pysqlite's implicit BEGIN and COMMIT around a single statement cost about a third
    of an UPDATE's time: 38 -> 27 µs an acquire-and-release pair), WAL, our own busy handling."""
    pragmas = (
        "journal_mode=WAL",
        f"synchronous={synchronous}",
        "busy_timeout=0",
        "wal_autocheckpoint=0",
        f"journal_size_limit={WAL_SIZE_LIMIT}",
    )

    def tune(dbapi_connection: Any, _record: object) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in pragmas:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    return tune


def _null(value: None) -> None:
    """The adapter pysqlite finds for a None parameter: None, bound as NULL, as without one. Without
    it, pysqlite looks for `__adapt__` on its protocol type for every None it binds, which raises
    and clears an `AttributeError` each time: about 2,000 instructions per None, some nine of them
    in a POST + HEAD (3.6 % of its instructions, counted with callgrind)."""
    return value


def _begin(connection: sa.Connection) -> None:
    """SQLAlchemy's own transactions (statements not prepared) on an autocommit connection: BEGIN
    explicitly (SQLAlchemy's documented recipe for pysqlite); `commit()` then ends it."""
    connection.exec_driver_sql("BEGIN")


def _copy_wal(database: str) -> None:
    """PASSIVE copies the bulk of the WAL into the database while writers go on (20-30 ms a second
    under a steady stream of POSTs). It never catches up with such a stream on its own, and the WAL
    grew without bound: 330 MB in 8 s of POST + HEAD."""
    with contextlib.closing(sqlite3.connect(database, timeout=1)) as connection:
        connection.execute("PRAGMA wal_checkpoint(PASSIVE)")


def _restart_wal(database: str) -> None:
    """RESTART copies what writers added since `_copy_wal`, holding new writers off for that moment
    (3-8 ms under the same stream: they get SQLITE_BUSY and wait for `_restarted`), so that the next
    write starts the WAL file over. It waits at most 50 ms for a reader still on an older snapshot
    (writers wait meanwhile); if one stays, the next checkpoint tries again."""
    with contextlib.closing(sqlite3.connect(database, timeout=1)) as connection:
        connection.execute("PRAGMA busy_timeout=50")
        connection.execute("PRAGMA wal_checkpoint(RESTART)")
