"""The lean asyncpg connection pool (`tusserver/pg_pool.py`) against the real PostgreSQL: reuse, a
bounded wait when every slot is lent, slots freed by dead connections, expiry after an outage."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.conftest import POSTGRES_ADMIN_URL
from tusserver.pg_pool import ConnectionPool

pytestmark = [pytest.mark.anyio, pytest.mark.postgresql]


class Counting:
    """Connects to the test server and counts the connections it made."""

    def __init__(self) -> None:
        self.made = 0

    async def __call__(self) -> asyncpg.Connection:
        self.made += 1
        return await asyncpg.connect(POSTGRES_ADMIN_URL, timeout=5)


@pytest.fixture
def connect() -> Counting:
    return Counting()


@contextlib.asynccontextmanager
async def _pool(connect: Counting, size: int, wait: float) -> AsyncIterator[ConnectionPool]:
    pool = ConnectionPool(connect, size, wait)
    try:
        yield pool
    finally:
        await pool.close()


async def _waiting(pool: ConnectionPool) -> asyncio.Task[asyncpg.Connection]:
    """A second `take` on a full pool, queued and waiting."""
    waiter = asyncio.create_task(pool.take())
    await asyncio.sleep(0)
    assert not waiter.done()
    return waiter


async def _backend_pid(connection: asyncpg.Connection) -> int:
    return int(await connection.fetchval("SELECT pg_backend_pid()"))


async def test_an_idle_connection_is_reused(connect: Counting) -> None:
    async with _pool(connect, size=2, wait=1) as pool:
        first = await pool.take()
        pid = await _backend_pid(first)
        pool.give_back(first)
        again = await pool.take()
        assert await _backend_pid(again) == pid
        assert pool.in_use() == 1
        pool.give_back(again)
        assert connect.made == 1
        assert pool.in_use() == 0


async def test_a_full_pool_hands_a_returned_connection_to_the_waiter(connect: Counting) -> None:
    async with _pool(connect, size=1, wait=5) as pool:
        held = await pool.take()
        waiter = await _waiting(pool)
        pool.give_back(held)
        assert await asyncio.wait_for(waiter, 5) is held
        assert connect.made == 1
        pool.give_back(held)


async def test_a_full_pool_refuses_after_the_timeout(connect: Counting) -> None:
    async with _pool(connect, size=1, wait=0.2) as pool:
        held = await pool.take()
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"no database connection free within 0\.2 s"):
            await pool.take()
        assert time.monotonic() - started < 2
        pool.give_back(held)
        assert await pool.take() is held  # the timed-out waiter left nothing behind
        pool.give_back(held)


async def test_a_dead_connection_frees_its_slot_for_a_waiter(connect: Counting) -> None:
    async with _pool(connect, size=1, wait=5) as pool:
        held = await pool.take()
        waiter = await _waiting(pool)
        held.terminate()  # as the runner does when a statement fails
        pool.give_back(held)
        fresh = await asyncio.wait_for(waiter, 5)
        assert fresh is not held
        assert not fresh.is_closed()
        assert await fresh.fetchval("SELECT 1") == 1
        assert connect.made == 2
        pool.give_back(fresh)


async def test_expire_replaces_idle_and_lent_connections(connect: Counting) -> None:
    async with _pool(connect, size=3, wait=5) as pool:
        idle, lent = await pool.take(), await pool.take()
        pool.give_back(idle)
        pool.expire()  # after an outage: the server may have restarted
        assert idle.is_closed()
        pool.give_back(lent)
        assert lent.is_closed()
        fresh = await pool.take()
        assert fresh not in (idle, lent)
        assert await fresh.fetchval("SELECT 1") == 1
        assert connect.made == 3
        pool.give_back(fresh)


async def test_a_connection_idle_too_long_is_not_reused(
    connect: Counting, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _pool(connect, size=1, wait=5) as pool:
        first = await pool.take()
        pool.give_back(first)
        monkeypatch.setattr("tusserver.pg_pool.IDLE_LIFETIME", 0.0)
        second = await pool.take()
        assert second is not first
        assert first.is_closed()
        pool.give_back(second)
