"""Request bodies reach the app as the parser made them (`request_bodies`): a lone chunk is the very
object the parser handed over (uvicorn's own path copies it twice), several are joined in order,
reading pauses above uvicorn's high-water mark and resumes when the app asks, and a client that
leaves is reported. The server's real protocol class, driven with bytes on a real socket transport."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.server import ServerState

from tusserver.interim import InterimHttpToolsProtocol
from tusserver.middleware import Message
from tusserver.request_bodies import ChunkedBodyCycle

pytestmark = pytest.mark.anyio


class RecordingProtocol(InterimHttpToolsProtocol):
    """The server's protocol, recording each body chunk the parser hands over."""

    parsed: list[bytes]

    def on_body(self, body: bytes) -> None:
        self.parsed.append(body)
        super().on_body(body)


class PacedApp:
    """An ASGI app that reads one body message each time the test allows it, then answers 204."""

    def __init__(self) -> None:
        self.allowed: asyncio.Queue[None] = asyncio.Queue()
        self.messages: asyncio.Queue[Message] = asyncio.Queue()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        while True:
            await self.allowed.get()
            message = await receive()
            self.messages.put_nowait(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def next_message(self) -> Message:
        self.allowed.put_nowait(None)
        async with asyncio.timeout(5):
            return await self.messages.get()


@asynccontextmanager
async def _protocol(app: PacedApp) -> AsyncIterator[RecordingProtocol]:
    config = uvicorn.Config(app=app, http=RecordingProtocol, log_config=None, lifespan="off")
    config.load()
    protocol = RecordingProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    protocol.parsed = []
    ours, theirs = socket.socketpair()
    transport, _ = await asyncio.get_running_loop().create_connection(asyncio.Protocol, sock=ours)
    protocol.connection_made(transport)
    try:
        yield protocol
    finally:
        transport.abort()
        theirs.close()


def _head(length: int) -> bytes:
    return f"PATCH /files/x HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n".encode()


async def test_a_lone_chunk_reaches_the_app_as_the_parser_made_it_and_several_are_joined() -> None:
    app = PacedApp()
    pieces = [bytes([n]) * 1000 for n in (1, 2, 3)]
    async with _protocol(app) as protocol:
        protocol.data_received(_head(3000) + pieces[0])
        first = await app.next_message()
        assert first["body"] is protocol.parsed[0]  # not a copy
        assert first["more_body"] is True
        protocol.data_received(pieces[1])
        protocol.data_received(pieces[2])
        rest = await app.next_message()
        assert rest["body"] == pieces[1] + pieces[2]
        assert rest["more_body"] is False
        assert isinstance(protocol.cycle, ChunkedBodyCycle)


async def test_reading_pauses_above_the_high_water_mark_and_resumes_when_the_app_reads() -> None:
    app = PacedApp()
    piece = b"x" * (HIGH_WATER_LIMIT // 2 + 1)
    async with _protocol(app) as protocol:
        protocol.data_received(_head(3 * len(piece)) + piece)
        assert not protocol.flow.read_paused
        protocol.data_received(piece)  # now more than the high-water mark waits for the app
        assert protocol.flow.read_paused
        taken = await app.next_message()
        assert taken["body"] == piece * 2
        assert not protocol.flow.read_paused  # the app asked for more: reading resumed
        protocol.data_received(piece)
        assert (await app.next_message())["body"] == piece


async def test_a_client_that_leaves_mid_body_is_reported_as_a_disconnect() -> None:
    app = PacedApp()
    async with _protocol(app) as protocol:
        protocol.data_received(_head(10_000) + b"y" * 100)
        assert (await app.next_message())["body"] == b"y" * 100
        protocol.connection_lost(None)
        assert (await app.next_message())["type"] == "http.disconnect"
