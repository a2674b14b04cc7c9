"""Request bodies as plain async iterators of bytes, straight from ASGI `receive`.

Owns three stream shapes used on the write path: `RequestBody` ends cleanly when the client
disconnects (so the bytes already received are kept, PROTOCOL.md C-P8), `LimitedBody` stops at a byte
budget and remembers that the client sent more, and `coalesce` turns uvicorn's small chunks into large
writes. No HTTP framework, no storage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

WRITE_SIZE = 1024 * 1024
"""Bytes gathered before one storage write: one thread hop per MiB, not per ASGI chunk."""


class RequestBody:
    """The request body; iteration ends on the last chunk, on client disconnect, or after
    `interrupt()`, and never raises.

    A small pump task moves ASGI messages into a two-slot queue, so `interrupt()` can end an
    iteration that waits for a client that went silent, without a task per chunk; the queue's size
    keeps uvicorn's flow control (it stops reading the socket while nobody receives).
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._queue: asyncio.Queue[MutableMapping[str, Any] | None] = asyncio.Queue(maxsize=2)
        self.disconnected = False
        self.interrupted = False

    def interrupt(self) -> None:
        self.interrupted = True
        if not self._queue.full():
            self._queue.put_nowait(None)

    async def _pump(self) -> None:
        while True:
            message = await self._receive()
            await self._queue.put(message)
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                return

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pump = asyncio.ensure_future(self._pump())
        try:
            while not self.interrupted:
                message = await self._queue.get()
                if message is None:
                    return
                if message["type"] == "http.disconnect":
                    self.disconnected = True
                    return
                chunk: bytes = message.get("body", b"")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    return
        finally:
            pump.cancel()


class LimitedBody:
    """Passes at most `limit` bytes through (None: no limit); `exceeded` tells if more came."""

    def __init__(self, chunks: AsyncIterable[bytes], limit: int | None) -> None:
        self._chunks = chunks
        self._limit = limit
        self.exceeded = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        remaining = self._limit
        async for chunk in self._chunks:
            if remaining is not None:
                if len(chunk) > remaining:
                    self.exceeded = True
                    if remaining:
                        yield chunk[:remaining]
                    return
                remaining -= len(chunk)
            yield chunk


async def coalesce(chunks: AsyncIterable[bytes], size: int = WRITE_SIZE) -> AsyncIterator[bytes]:
    """Regroup `chunks` into blocks of at least `size` bytes (the last one may be shorter)."""
    pending: list[bytes] = []
    pending_size = 0
    async for chunk in chunks:
        pending.append(chunk)
        pending_size += len(chunk)
        if pending_size >= size:
            yield pending[0] if len(pending) == 1 else b"".join(pending)
            pending.clear()
            pending_size = 0
    if pending:
        yield b"".join(pending)
