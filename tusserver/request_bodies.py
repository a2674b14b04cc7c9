"""Request bodies handed to the app as the parser read them, without uvicorn's two copies.

uvicorn's httptools protocol appends every body chunk the parser hands over to a `bytearray` and,
for each ASGI `http.request` message, copies that into a new `bytes`: two copies of every byte of
an upload on the event loop, on top of the parser's own. Here a request's cycle keeps the chunks as
they came; `receive()` passes a lone chunk on as it is and joins several once. The flow control is
uvicorn's: reading pauses once more than `HIGH_WATER_LIMIT` bytes wait for the app and resumes
when it asks for more. Measured under `perf` (2,000 samples a second of the server process) with
one 1 GiB PATCH, three runs each: `memmove` 284-329 samples before, 150-220 after (the copies
left are the event loop's and the parser's), about 60 ms of CPU less per GiB.

Everything else of the cycle (`100 Continue` on the first read, `http.disconnect` once the client
left or the response is complete) is uvicorn's behaviour, restated in `receive` because that method
also does the copying. Upgrade requests and any cycle not adopted here keep uvicorn's own path.
Besides the httptools callbacks this relies on these attributes of uvicorn's cycle, without a
leading underscore but not documented either: `waiting_for_100_continue`, `transport`,
`disconnected`, `response_complete`, `flow`, `message_event` and `more_body`.
"""

from __future__ import annotations

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from tusserver.middleware import Message


class ChunkedBodyCycle(RequestResponseCycle):
    """uvicorn's request-response cycle with its body kept as the list of chunks the parser made
    (the class of a cycle `ChunkedBodyProtocol` adopted; its own state is `chunks` and `waiting`)."""

    chunks: list[bytes]
    waiting: int
    """Body bytes in `chunks`."""

    async def receive(self) -> Message:  # type: ignore[override]
        if self.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.waiting_for_100_continue = False
        if not self.disconnected and not self.response_complete:
            self.flow.resume_reading()
            await self.message_event.wait()
            self.message_event.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks, self.waiting = [], 0
        return {"type": "http.request", "body": body, "more_body": self.more_body}


def adopt(cycle: RequestResponseCycle) -> None:
    """Make a cycle uvicorn just built keep its body as chunks (before its task first runs, so the
    app gets this `receive`)."""
    cycle.__class__ = ChunkedBodyCycle
    assert isinstance(cycle, ChunkedBodyCycle)
    cycle.chunks, cycle.waiting = [], 0


class ChunkedBodyProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose request cycles keep their bodies as chunks."""

    def on_headers_complete(self) -> None:
        made = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not made and cycle is not None and type(cycle) is RequestResponseCycle:
            adopt(cycle)

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if (
            not isinstance(cycle, ChunkedBodyCycle)
            or cycle.response_complete
            or (self.parser.should_upgrade() and self._should_upgrade())
        ):
            super().on_body(body)  # uvicorn's own path (which drops the bytes of the latter two)
            return
        cycle.chunks.append(body)
        cycle.waiting += len(body)
        if cycle.waiting > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()
