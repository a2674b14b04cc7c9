"""Small writes of one event-loop turn leave as one write (`write_batching.BatchedTransport`), on real
socket transports: order kept, large writes and closes never held, nothing written to a connection
that is gone; and a real server answers through it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from uvicorn.server import ServerState

from tests.servers import ServerProcess
from tusserver.interim import InterimHttpToolsProtocol
from tusserver.write_batching import DIRECT_WRITE_BYTES, BatchedTransport


class Counted(asyncio.Transport):
    """The real transport, with each write that reaches it recorded."""

    def __init__(self, inner: asyncio.Transport) -> None:
        super().__init__()
        self.inner = inner
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        self.inner.write(data)

    def write_eof(self) -> None:
        self.inner.write_eof()

    def close(self) -> None:
        self.inner.close()

    def abort(self) -> None:
        self.inner.abort()

    def is_closing(self) -> bool:
        return self.inner.is_closing()

    def get_write_buffer_size(self) -> int:
        return self.inner.get_write_buffer_size()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.inner.get_extra_info(name, default)


@asynccontextmanager
async def _connection() -> AsyncIterator[tuple[BatchedTransport, Counted, socket.socket]]:
    """A batched transport over one end of a real socket pair; the other end to read from."""
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, sock=ours)
    counted = Counted(transport)
    batched = BatchedTransport(counted, loop)
    theirs.setblocking(False)
    try:
        yield batched, counted, theirs
    finally:
        transport.abort()
        theirs.close()


async def _read_until_closed(peer: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    received = b""
    while chunk := await asyncio.wait_for(loop.sock_recv(peer, 65536), 5):
        received += chunk
    return received


@pytest.mark.anyio
async def test_writes_of_one_turn_leave_together_in_order() -> None:
    async with _connection() as (batched, counted, peer):
        batched.write(b"HTTP/1.1 201 Created\r\n")
        batched.write(b"location: /files/1\r\n\r\n")
        batched.writelines([b"body ", memoryview(b"bytes")])
        assert counted.writes == []  # held until the turn ends
        assert batched.get_write_buffer_size() == 54
        await asyncio.sleep(0)
        assert counted.writes == [b"HTTP/1.1 201 Created\r\nlocation: /files/1\r\n\r\nbody bytes"]
        batched.write(b"next turn")
        await asyncio.sleep(0)
        assert counted.writes[1:] == [b"next turn"]
        batched.close()
        assert await _read_until_closed(peer) == counted.writes[0] + b"next turn"


@pytest.mark.anyio
async def test_a_large_write_goes_at_once_after_what_waits() -> None:
    large = b"x" * DIRECT_WRITE_BYTES
    async with _connection() as (batched, counted, peer):
        batched.write(b"head\r\n\r\n")
        batched.write(large)
        assert counted.writes == [b"head\r\n\r\n", large]
        await asyncio.sleep(0)
        assert len(counted.writes) == 2  # nothing left for the end of the turn
        batched.close()
        assert await _read_until_closed(peer) == b"head\r\n\r\n" + large


@pytest.mark.anyio
async def test_close_and_eof_write_what_waits_first_abort_drops_it() -> None:
    async with _connection() as (batched, counted, peer):
        batched.write(b"answer\n")
        batched.write_eof()  # a half-close (the server's 431 / 408 answers)
        assert counted.writes == [b"answer\n"]
        assert await _read_until_closed(peer) == b"answer\n"
    async with _connection() as (batched, counted, peer):
        batched.write(b"never sent")
        batched.abort()
        await asyncio.sleep(0)
        assert counted.writes == []
        assert batched.is_closing()


@pytest.mark.anyio
async def test_nothing_is_written_to_a_closed_connection() -> None:
    async with _connection() as (batched, counted, _peer):
        batched.write(b"late")
        counted.inner.close()  # the connection ended under the waiting write
        await asyncio.sleep(0)
        assert counted.writes == []
        assert batched.get_extra_info("socket") is not None


def test_the_server_answers_through_batched_writes(tmp_path: Path) -> None:
    """A real server: an answer with a body (head and body sent separately by uvicorn) and kept-alive
    requests on one connection read back whole."""
    server = ServerProcess(tmp_path / "data", f"sqlite:///{tmp_path / 'db.sqlite'}")
    server.start()
    try:
        with httpx.Client() as client:
            for _ in range(3):
                missing = client.head(server.url + "0" * 32, headers={"Tus-Resumable": "1.0.0"})
                assert missing.status_code == 404
                refused = client.post(server.url, headers={"Tus-Resumable": "0.2.2"})
                assert refused.status_code == 412
                assert refused.text == "Tus-Resumable must be 1.0.0\n"
                assert refused.headers["Tus-Version"] == "1.0.0"
    finally:
        server.stop()


@pytest.mark.anyio
async def test_the_server_protocol_writes_through_a_batched_transport() -> None:
    config = uvicorn.Config(app=_no_app, http=InterimHttpToolsProtocol, log_config=None)
    config.load()
    protocol = InterimHttpToolsProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    async with _connection() as (_batched, counted, _peer):
        protocol.connection_made(counted)
        assert isinstance(protocol.transport, BatchedTransport)
        protocol.connection_lost(None)


async def _no_app(scope: object, receive: object, send: object) -> None:
    raise AssertionError("no request reaches it")
