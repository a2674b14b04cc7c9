"""PostgreSQL statements straight on an asyncpg pool, for the few statements every request runs.

SQLAlchemy's async layer costs about as much as the round trip itself per statement (a greenlet
switch, a pool checkout and result wrapping: ~150 µs here, where asyncpg alone needs ~80 µs for a
primary-key SELECT). So the hot statements of `records.py` are compiled by SQLAlchemy once, for the
asyncpg dialect (`prepare`), and then run with asyncpg directly: the SQL text, the order of its
parameters and the types' own bind and result processors all come from that compilation, so the
query is still written once, in `records.py`. Anything not prepared (the lease renewal's expanding
IN list, the sweeper's listing) goes through SQLAlchemy as before.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine

from tusserver.statements import AsyncRunner, Params, Ran, unavailable

Processor = Callable[[Any], Any]
_CONNECTION_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
)


class Row(dict[str, Any]):
    """A result row with the access `records.py` uses: `row.name` and `row._mapping`."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def _mapping(self) -> dict[str, Any]:
        return self


@dataclass(frozen=True)
class _Plan:
    sql: str
    names: tuple[str, ...]
    compiled: sa.engine.Compiled
    bind: dict[str, Processor]
    result: dict[str, Processor]
    returns_rows: bool


class DirectRunner:
    """Prepared statements on asyncpg; everything else on `AsyncRunner` (SQLAlchemy)."""

    def __init__(self, engine: AsyncEngine, prepared: Sequence[sa.Executable]) -> None:
        self._fallback = AsyncRunner(engine)
        self._dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._plans = {id(statement): _plan(statement, engine.dialect) for statement in prepared}

    async def run(self, statement: sa.Executable, params: Params | None = None) -> Ran:
        plan = self._plans.get(id(statement))
        if plan is None:
            return await self._fallback.run(statement, params)
        values = plan.compiled.construct_params(params or {}) or {}
        arguments = [_bound(plan, name, values[name]) for name in plan.names]
        try:
            pool = self._pool or await self._open()
            if plan.returns_rows:
                records = await pool.fetch(plan.sql, *arguments)
                rows = [Row({key: _result(plan, key, value) for key, value in r.items()}) for r in records]
                return Ran(rows, len(rows))
            status = await pool.execute(plan.sql, *arguments)
        except _CONNECTION_ERRORS as exc:
            if self._pool is not None:  # the server may have restarted: every pooled connection is
                await self._pool.expire_connections()  # suspect, replace them all on next use
            raise unavailable(exc) from exc
        return Ran([], int(status.rsplit(" ", 1)[-1]))

    async def _open(self) -> asyncpg.Pool:
        async with self._opening:  # requests arriving together make one pool
            if self._pool is None:
                self._pool = await self._new_pool()
        return self._pool

    async def _new_pool(self) -> asyncpg.Pool:
        # No reset on release: asyncpg's default resets every connection it gets back (RESET ALL,
        # UNLISTEN, ...), a round trip per statement; these autocommitted statements leave no state.
        return await asyncpg.create_pool(self._dsn, min_size=0, max_size=20, init=_codecs, reset=_keep)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        await self._fallback.close()


def _plan(statement: sa.Executable, dialect: Dialect) -> _Plan:
    compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
    names = tuple(compiled.positiontup or ())
    bind = {}
    for name in names:
        processor = compiled.binds[name].type.bind_processor(dialect)
        if processor is not None:
            bind[name] = processor
    if isinstance(statement, sa.Select):
        described, returns_rows = statement.column_descriptions, True
    else:
        described = statement.returning_column_descriptions  # type: ignore[attr-defined]
        returns_rows = bool(described)
    result = {}
    for column in described:
        processor = column["type"].result_processor(dialect, None)
        if processor is not None:
            result[column["name"]] = processor
    return _Plan(compiled.string, names, compiled, bind, result, returns_rows)


def _bound(plan: _Plan, name: str, value: Any) -> Any:
    processor = plan.bind.get(name)
    return value if processor is None else processor(value)


def _result(plan: _Plan, key: str, value: Any) -> Any:
    processor = plan.result.get(key)
    return value if processor is None else processor(value)


async def _codecs(connection: asyncpg.Connection) -> None:
    """JSON as SQLAlchemy's asyncpg dialect sets it up: its bind processor serializes the value to
    text, the codec sends that text and decodes what comes back."""
    await connection.set_type_codec(
        "json", encoder=str.encode, decoder=_decode_json, schema="pg_catalog", format="binary"
    )


async def _keep(connection: asyncpg.Connection) -> None:
    return None


def _decode_json(raw: bytes) -> Any:
    return json.loads(raw.decode())
