"""PostgreSQL statements straight on asyncpg connections (`pg_pool.py`), for the few statements every
request runs.

SQLAlchemy's async layer costs about as much as the round trip itself per statement (a greenlet
switch, a pool checkout and result wrapping: ~150 µs here, where asyncpg alone needs ~80 µs for a
primary-key SELECT). So the hot statements of `records.py` are compiled once for the asyncpg dialect
(`prepared.plan`) and then run with asyncpg directly. Anything not prepared (the lease renewal's expanding
IN list, the sweeper's listing) goes through `AsyncRunner`: autocommitted statements on SQLAlchemy's
async engine, one round trip each instead of BEGIN + statement + COMMIT. What requests run within a few
turns of the event loop (`commit_groups.GATHER_TURNS`) shares a round trip where it can: the new
uploads' single-row INSERTs (`executemany`) and the lookups of an upload by its ID (`KeyLookup`: one
`= ANY(...)` SELECT).

Every statement is bounded by `timeout` (connecting, waiting for a pooled connection, running), and
connections use TCP keepalive, so a database that stops answering (a blackholed network, not only a
refused connection) turns into 503 + Retry-After within seconds instead of requests hanging for
minutes. Only connection-class failures (`is_outage`) become 503; an error in the SQL propagates.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tusserver.commit_groups import AwaitedCommitGroups, Members, Outcomes, Regroup
from tusserver.errors import ServiceUnavailable
from tusserver.pg_pool import ConnectionPool
from tusserver.prepared import Params, Plan, Ran, plan
from tusserver.statements import Step, unavailable

Processor = Callable[[Any], Any]
_OUTAGES = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08: connection exceptions
    asyncpg.InterfaceError,  # the client side: connection closed, ...
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, cannot connect now, cancelled
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # class 28: a password changed under us
)
_SA_OUTAGES = (sa.exc.TimeoutError, sa.exc.InterfaceError, sa.exc.OperationalError, OSError, TimeoutError)
_KEEPALIVE = (  # first probe after 5 s idle, then every 2 s, dead after 3 unanswered
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", 0), 5),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", 0), 2),
    (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", 0), 3),
)


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` (from asyncpg, or SQLAlchemy wrapping it) means the database cannot be used right
    now, as opposed to a statement that is wrong."""
    if isinstance(exc, _OUTAGES):
        return True
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        cause = exc.orig.__cause__ if exc.orig is not None else None
        return isinstance(cause, _OUTAGES) or isinstance(
            exc, (sa.exc.InterfaceError, sa.exc.OperationalError)
        )
    return isinstance(exc, _SA_OUTAGES)


class AsyncRunner:
    """Autocommitted statements on an async engine. It keeps a pool of its own, made autocommit once
    for good: no isolation level set and reset, and no ROLLBACK, per checkout (measured: 212 -> 185 µs
    a primary-key SELECT on loopback)."""

    def __init__(self, engine: AsyncEngine, timeout: float = 5.0, pool_size: int = 20) -> None:
        self._timeout = timeout
        self._engine = create_async_engine(
            engine.url,
            isolation_level="AUTOCOMMIT",
            skip_autocommit_rollback=True,
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=timeout,
            pool_recycle=1800,
            pool_pre_ping=True,
            connect_args=connect_arguments(timeout),
        )
        sa.event.listen(self._engine.sync_engine, "connect", _keep_adapted_alive)

    async def run(self, statement: sa.Executable, params: Params | None = None) -> Ran:
        try:
            async with asyncio.timeout(self._timeout * 2):  # checkout + ping + statement, at most
                async with self._engine.connect() as connection:
                    result = await connection.execute(statement, params)
                    rows = result.all() if result.returns_rows else []
                    return Ran(rows, result.rowcount)
        except Exception as exc:
            if is_outage(exc):
                raise unavailable(exc) from exc
            raise

    async def run_guarded(self, guard: Step, follow: Sequence[Step]) -> Ran:
        try:
            async with asyncio.timeout(self._timeout * 2):
                async with self._engine.connect() as autocommitted:
                    connection = await autocommitted.execution_options(isolation_level="READ COMMITTED")
                    await connection.begin()  # committed when the block ends without an error
                    result = await connection.execute(*guard)
                    rows = result.all() if result.returns_rows else []
                    count = len(rows) if rows else result.rowcount
                    if count:
                        for step in follow:
                            await connection.execute(*step)
                    await connection.commit()
                    return Ran(rows, count)
        except Exception as exc:
            if is_outage(exc):
                raise unavailable(exc) from exc
            raise

    def in_use(self) -> int:
        """Connections checked out of this runner's pool now."""
        checked_out = getattr(self._engine.sync_engine.pool, "checkedout", None)
        return int(checked_out()) if callable(checked_out) else 0

    async def close(self) -> None:
        await self._engine.dispose()


def connect_arguments(timeout: float) -> dict[str, Any]:
    """asyncpg connection options that bound connecting and each statement by `timeout` seconds."""
    return {"timeout": timeout, "command_timeout": timeout}


def _keep_adapted_alive(dbapi_connection: Any, _record: object) -> None:
    keep_alive(dbapi_connection._connection)  # SQLAlchemy's adapter around the asyncpg connection


def keep_alive(connection: asyncpg.Connection) -> None:
    """TCP keepalive on the connection's socket, so a dead peer is noticed on an idle connection."""
    transport = getattr(connection, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    for level, option, value in _KEEPALIVE:
        if option:
            with contextlib.suppress(OSError):
                sock.setsockopt(level, option, value)


@dataclass(frozen=True)
class KeyLookup:
    """A prepared SELECT of at most one row by key (`one`, the key in its parameter `key`) and the
    same SELECT of many keys (`many`: `column = ANY(:keys)`, the key in column `column` of its rows).
    The lookups that requests make within a few loop turns share one round trip."""

    one: sa.Executable
    key: str
    many: sa.Executable
    keys: str
    column: str


class DirectRunner:
    """Prepared statements on asyncpg; everything else on `AsyncRunner` (SQLAlchemy)."""

    def __init__(
        self,
        engine: AsyncEngine,
        prepared: Sequence[sa.Executable],
        timeout: float = 5.0,
        pool_size: int = 20,
        lookups: Sequence[KeyLookup] = (),
    ) -> None:
        self._timeout = timeout
        self._fallback = AsyncRunner(engine, timeout, pool_size)
        self._dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._pool = ConnectionPool(self._new_connection, pool_size, timeout)
        self._plans = {id(statement): plan(statement, engine.dialect) for statement in prepared}
        self._groups = {
            id(statement): AwaitedCommitGroups(self._insert_together, one_at_a_time=False)
            for statement in prepared
            if _single_row_insert(statement)
        }
        for lookup in lookups:
            together = functools.partial(self._look_up_together, lookup, plan(lookup.many, engine.dialect))
            self._groups[id(lookup.one)] = AwaitedCommitGroups(together, one_at_a_time=False)

    async def run(self, statement: sa.Executable, params: Params | None = None) -> Ran:
        prepared = self._plans.get(id(statement))
        if prepared is None:
            return await self._fallback.run(statement, params)
        params = params or {}
        groups = self._groups.get(id(statement))
        if groups is not None:
            try:
                return await groups.submit(((prepared, params),))
            except Regroup:
                pass  # its group failed as a whole: alone now
        return await self._on_connection(lambda connection: self._execute(connection, prepared, params))

    async def _insert_together(self, members: Members) -> Outcomes:
        """The single-row INSERTs of one statement that requests made in a group's turns, in one round
        trip (asyncpg's `executemany`: pipelined, and atomic). If they fail as a whole for any
        reason but an outage (a key taken), each request inserts again alone and meets its own
        error, if any. Each INSERT costs about 118 µs of CPU alone and 33 µs in fours."""
        steps = [step for (step,) in members]
        if len(steps) == 1:
            return [await self._alone(*steps[0])]
        prepared = steps[0][0]
        try:
            arguments = [prepared.arguments(params) for _, params in steps]
            await self._on_connection(lambda connection: self._execute_many(connection, prepared, arguments))
        except ServiceUnavailable as exc:
            return [exc] * len(steps)
        except Exception:
            return [Regroup() for _ in steps]
        return [Ran([], 1) for _ in steps]

    async def _alone(self, prepared: Plan, params: Params) -> Ran | BaseException:
        """A group of one: its statement as it is, its error as its outcome."""
        try:
            return await self._on_connection(lambda connection: self._execute(connection, prepared, params))
        except Exception as exc:
            return exc

    async def _look_up_together(self, lookup: KeyLookup, many: Plan, members: Members) -> Outcomes:
        """The key lookups of a group's turns in one round trip, each request answered with its own
        row (or none); if the shared SELECT fails for anything but an outage, each runs alone."""
        steps = [step for (step,) in members]
        if len(steps) == 1:
            return [await self._alone(*steps[0])]
        keys = [params[lookup.key] for _, params in steps]
        try:
            found = await self._on_connection(
                lambda connection: self._execute(connection, many, {lookup.keys: list(set(keys))})
            )
        except ServiceUnavailable as exc:
            return [exc] * len(steps)
        except Exception:
            return [Regroup() for _ in steps]
        by_key = {row[lookup.column]: row for row in found.rows}
        return [Ran([by_key[key]], 1) if key in by_key else Ran([], 0) for key in keys]

    async def run_guarded(self, guard: Step, follow: Sequence[Step]) -> Ran:
        plans = [self._plans.get(id(statement)) for statement, _ in (guard, *follow)]
        if any(prepared is None for prepared in plans):
            return await self._fallback.run_guarded(guard, follow)
        steps = [(p, params) for p, (_, params) in zip(plans, (guard, *follow), strict=True) if p]

        async def in_transaction(connection: asyncpg.Connection) -> Ran:
            async with connection.transaction():
                first = await self._execute(connection, *steps[0])
                if first.rowcount:
                    for step in steps[1:]:
                        await self._execute(connection, *step)
            return first

        return await self._on_connection(in_transaction)

    async def _on_connection(self, work: Callable[[asyncpg.Connection], Awaitable[Ran]]) -> Ran:
        """`work` on a pooled connection, every wait bounded by the timeout; outages become 503."""
        pool = self._pool
        try:
            connection = await pool.take()  # connecting included
            try:
                return await work(connection)
            except BaseException:
                # Closed at once: a graceful close would first ask the server to cancel the
                # statement, over a new connection, which a blackholed network never answers.
                connection.terminate()
                raise
            finally:
                pool.give_back(connection)
        except Exception as exc:
            if not is_outage(exc):
                raise
            pool.expire()  # the server may have restarted: every pooled connection is suspect
            raise unavailable(exc) from exc

    async def _execute(self, connection: asyncpg.Connection, prepared: Plan, params: Params) -> Ran:
        arguments = prepared.arguments(params)
        if prepared.returns_rows:
            records = await connection.fetch(prepared.sql, *arguments, timeout=self._timeout)
            rows = [prepared.row(record) for record in records]
            return Ran(rows, len(rows))
        status = await connection.execute(prepared.sql, *arguments, timeout=self._timeout)
        return Ran([], int(status.rsplit(" ", 1)[-1]))

    async def _execute_many(
        self, connection: asyncpg.Connection, prepared: Plan, arguments: list[list[Any]]
    ) -> Ran:
        await connection.executemany(prepared.sql, arguments, timeout=self._timeout)
        return Ran([], len(arguments))

    async def _new_connection(self) -> asyncpg.Connection:
        connection = await asyncpg.connect(
            self._dsn, **connect_arguments(self._timeout), server_settings=_KEYED_ONLY
        )
        try:
            async with asyncio.timeout(self._timeout):
                await _set_up(connection)
        except BaseException:
            connection.terminate()
            raise
        return connection

    def in_use(self) -> int:
        """Connections checked out of both pools now (for `/metrics`)."""
        return self._pool.in_use() + self._fallback.in_use()

    async def close(self) -> None:
        await self._pool.close()
        await self._fallback.close()


_KEYED_ONLY = {"enable_seqscan": "off"}
"""These connections run only statements that find their rows by key. PostgreSQL keeps the plan it
chose for a prepared statement while the table was nearly empty (a sequential scan, for `_GET_MANY`'s
`= ANY(...)`) until statistics are next gathered; this keeps it to the index whatever the statistics
say. (It forbids nothing: a statement with no index to use still scans.)"""


def _single_row_insert(statement: sa.Executable) -> bool:
    """An INSERT of one row from its VALUES that returns nothing: each one inserts exactly one row."""
    return (
        isinstance(statement, sa.Insert)
        and statement.select is None
        and not statement.returning_column_descriptions
        and not statement._multi_values  # `values([...])` with several rows: no public name for it
    )


async def _set_up(connection: asyncpg.Connection) -> None:
    """Keepalive, and JSON as SQLAlchemy's asyncpg dialect sets it up: its bind processor serializes
    the value to text, the codec sends that text and decodes what comes back."""
    keep_alive(connection)
    await connection.set_type_codec(
        "json", encoder=str.encode, decoder=_decode_json, schema="pg_catalog", format="binary"
    )


def _decode_json(raw: bytes) -> Any:
    return json.loads(raw.decode())
