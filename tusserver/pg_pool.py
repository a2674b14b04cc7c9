"""A lean pool of asyncpg connections for the statements of every request (`pg_direct.py`).

asyncpg's own `Pool` spends about as much on a checkout and return as PostgreSQL spends on a
primary-key UPDATE over loopback: a task for the acquire timeout, a shielded task and a reset for the
release, a proxy object per use. Here a checkout is a `list.pop()` when a connection is idle; only
when none is and every slot is taken does a request wait, bounded by `timeout` (then `TimeoutError`,
which the runner answers with 503).

Connections are made on demand, at most `size` at once, each bounded by the connect timeout of
`connect`; one idle for `IDLE_LIFETIME` is closed rather than reused (as asyncpg's pool does: a
firewall or PgBouncer may have dropped it silently). `expire()` (after an outage: the server may have
restarted) closes the idle ones and marks those in use to be closed when they come back, so later
statements run on fresh connections.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable

import asyncpg

Connect = Callable[[], Awaitable[asyncpg.Connection]]
IDLE_LIFETIME = 300.0
"""Seconds an idle connection stays reusable."""


class ConnectionPool:
    def __init__(self, connect: Connect, size: int, timeout: float) -> None:
        self._connect = connect
        self._size = size
        self._timeout = timeout
        self._idle: list[tuple[asyncpg.Connection, float]] = []
        """Idle connections with the `time.monotonic()` they were given back, newest last."""
        self._lent: set[asyncpg.Connection] = set()
        self._expired: set[asyncpg.Connection] = set()
        self._waiters: collections.deque[asyncio.Future[asyncpg.Connection | None]] = collections.deque()
        self._slots = 0
        """Slots taken: connections idle, lent, or being made."""
        self._closed = False

    async def take(self) -> asyncpg.Connection:
        """A connection for one unit of work; return it with `give_back`."""
        if self._closed:
            raise asyncpg.InterfaceError("the connection pool is closed")
        connection = self._idle_one()
        if connection is None:
            if self._slots < self._size:
                self._slots += 1
            else:
                connection = await self._wait()
            if connection is None:  # the slot is ours: make its connection
                try:
                    connection = await self._connect()
                except BaseException:
                    self._free_slot()
                    raise
        self._lent.add(connection)
        return connection

    def give_back(self, connection: asyncpg.Connection) -> None:
        """Return a connection; a closed or expired one gives up its slot instead."""
        self._lent.discard(connection)
        if connection in self._expired or self._closed:
            self._expired.discard(connection)
            connection.terminate()
        if connection.is_closed():
            self._free_slot()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self._idle.append((connection, time.monotonic()))

    def in_use(self) -> int:
        return len(self._lent)

    def expire(self) -> None:
        """Replace every connection: the idle ones now, those lent when they are given back."""
        idle, self._idle = self._idle, []
        for connection, _ in idle:
            connection.terminate()
            self._free_slot()
        self._expired = set(self._lent)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection, _ in idle:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), self._timeout)
            connection.terminate()
        self._slots -= len(idle)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(asyncpg.InterfaceError("the connection pool is closed"))

    def _idle_one(self) -> asyncpg.Connection | None:
        stale = time.monotonic() - IDLE_LIFETIME
        while self._idle:
            connection, since = self._idle.pop()
            if since > stale and not connection.is_closed():
                return connection
            connection.terminate()
            self._slots -= 1
        return None

    async def _wait(self) -> asyncpg.Connection | None:
        """Wait for a connection given back (handed over), or for a slot set free (None: the caller
        makes the connection, the slot already counted as its own)."""
        waiter: asyncio.Future[asyncpg.Connection | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._timeout):
                return await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():  # handed over just as the time ran out
                handed = waiter.result()
                if handed is None:
                    self._free_slot()
                else:
                    self._lent.add(handed)
                    self.give_back(handed)
            raise TimeoutError(f"no database connection free within {self._timeout:g} s") from None
        finally:
            if not waiter.done():
                waiter.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _free_slot(self) -> None:
        """A slot's connection is gone: pass the slot to the next waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._slots -= 1
