"""The HTTP/1.1 connection protocol the server runs: uvicorn's httptools protocol plus limits on the
request head that hold on a public endpoint.

This module owns two of the three abuse limits (`--max-concurrency` is uvicorn's own
`limit_concurrency`, passed through by `cli.serve`):

* `max_header_size`: the request line plus header block, in bytes, up to and including the blank line
  that ends it. httptools has no cap of its own (it buffers a header value whole before the callback
  sees it), so bytes are counted in `data_received` while a head is being read. One byte beyond the
  limit answers `431 Request Header Fields Too Large` at once, without waiting for the rest. Exact for
  every head that starts a read; a pipelined head that begins in the middle of a read (after the end
  of the previous request) is counted from the next read, so it may pass the limit by up to one read.
* `header_timeout`: seconds from the moment a connection is made (or, on a keep-alive connection, from
  the read that brings the first bytes of the next request) until its head is complete. Beyond it:
  `408 Request Timeout`.
  uvicorn itself has no timer on a new connection that sends nothing, nor on a keep-alive connection
  once the next request has started (`timeout_keep_alive` only covers the idle gap between requests,
  and closes silently, which stays as it is).

Both answers are a short `text/plain` text with `Connection: close` (after the responses to earlier
pipelined requests, if any are still going out); the connection is then half-closed and what the
client still sends is dropped for a moment before closing, so that a client still sending reads the
answer instead of a reset. Once a head is complete nothing here runs per read but two flag tests:
request bodies stream through uvicorn's path untouched (their stalls are `--network-timeout`'s
business, in the app).

The limits come from `TUSSERVER_MAX_HEADER_SIZE` / `TUSSERVER_HEADER_TIMEOUT` (which `cli.serve`
exports before uvicorn starts or spawns workers), parsed by `Settings`; a header timeout of 0 turns the
timer off. uvicorn pickles the class by name into spawned workers, so it must stay importable as it is.
Besides the httptools callbacks, this relies on uvicorn attributes without a leading underscore but not
documented either: `cycle` (`response_complete`), `pipeline`, `flow`, `loop`, `logger`, `client`,
`server_state.default_headers` and `STATUS_LINE`.
"""

from __future__ import annotations

import asyncio
import functools
import os
from asyncio import TimerHandle
from dataclasses import dataclass
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from tusserver.config import ENV_PREFIX, Settings

MAX_HEADER_SIZE_ENV = ENV_PREFIX + "MAX_HEADER_SIZE"
HEADER_TIMEOUT_ENV = ENV_PREFIX + "HEADER_TIMEOUT"
LINGER_SECONDS = 2.0
"""After a refusal, how long the connection keeps reading (and dropping) what the client still sends."""
LINGER_BYTES = 1024 * 1024
"""... and how much of it, at most, before closing regardless."""


@dataclass(frozen=True)
class HeadLimits:
    max_size: int
    """Largest request line + header block, in bytes."""
    timeout: float
    """Seconds to complete a request head; 0 or less: no timer."""


def limits_from_env() -> HeadLimits:
    """The limits the environment sets now (`Settings` defaults for what it leaves out)."""
    return _parsed_limits(os.environ.get(MAX_HEADER_SIZE_ENV, ""), os.environ.get(HEADER_TIMEOUT_ENV, ""))


@functools.lru_cache(maxsize=8)
def _parsed_limits(max_size: str, timeout: str) -> HeadLimits:
    settings = Settings.from_env({MAX_HEADER_SIZE_ENV: max_size, HEADER_TIMEOUT_ENV: timeout})
    return HeadLimits(settings.max_header_size, settings.header_timeout)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` that answers 431 to an oversized request head and 408 to a slow one."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = limits_from_env()
        self.max_head_size = limits.max_size
        self.head_timeout = limits.timeout
        self._head_complete = False
        """True from the end of a request's head to the end of its body: bytes are body bytes."""
        self._head_begun = False
        """True from a request's first byte to the end of its head."""
        self._head_bytes = 0
        self._message_ended = False
        self._head_timer: TimerHandle | None = None
        self._refused = False
        self._deferred: tuple[int, str] | None = None
        self._dropped_bytes = 0
        self._linger_timer: TimerHandle | None = None

    # Connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()  # uvicorn sets no timer until a first request has been answered

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_complete:  # the body of a request: straight through, as uvicorn has it
            super().data_received(data)
        else:
            self._head_data_received(data)
        if self._head_begun and not self._refused:
            self._start_head_timer()  # a head began in this read (after a body, or alone) and did not end

    def _head_data_received(self, data: bytes) -> None:
        if self._refused:
            self._dropped_bytes += len(data)
            if self._dropped_bytes > LINGER_BYTES:
                self.transport.close()
            return
        room = self.max_head_size - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # This read goes past the limit if the head does not end within the room left: feed that much,
        # then the rest only if the head did end (the rest is body, or the next pipelined request).
        self._head_bytes += room
        self._message_ended = False
        if room > 0:
            super().data_received(data[:room])
        if self.transport.is_closing() or self.transport.get_protocol() is not self:
            return  # uvicorn answered 400 to a malformed request, or the connection was upgraded
        if not (self._head_complete or self._message_ended):
            self._refuse(431, f"request line and headers exceed {self.max_head_size} bytes")
            return
        super().data_received(data[room:])

    # Parser callbacks (httptools calls them from within `feed_data`)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # The first byte of a request (on a kept-alive connection: uvicorn's idle timer has stopped).
        # Its timer starts only if the head does not end within this read (`data_received`):
        # most heads arrive whole, and a timer set and cancelled for each cost 2 µs a request.
        self._head_begun = True

    def on_headers_complete(self) -> None:
        self._head_begun = False
        self._head_complete = True
        self._stop_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        # The next bytes start another request's head, counted from zero. Counting is by read: if that
        # head begins within this very read (pipelining), it is counted from the next read, so it may
        # exceed the limit by at most one read (the transport's read size, 256 KiB).
        self._head_complete = False
        self._head_bytes = 0
        self._message_ended = True
        super().on_message_complete()

    def on_response_complete(self) -> None:
        """Called by a request's cycle once its response is out (uvicorn then starts the next pipelined
        request, if any): a refusal that had to wait for the responses before it is sent now."""
        super().on_response_complete()
        if self._deferred is None or self.transport.is_closing():
            return
        if self.pipeline or not self.cycle.response_complete:
            return  # the next pipelined request is being answered now
        status, text = self._deferred
        self._deferred = None
        self._answer(status, text)

    # Refusals

    def _start_head_timer(self) -> None:
        if self._head_timer is None and self.head_timeout > 0:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_complete or self._refused or self.transport.is_closing():
            return
        self._refuse(408, f"request line and headers not received within {self.head_timeout:g} s")

    def _refuse(self, status: int, text: str) -> None:
        """Answer `status` with `text` and close, reading nothing more of this head."""
        self._stop_head_timer()
        self._refused = True
        if self.cycle is not None and not self.cycle.response_complete:
            # Responses to earlier (pipelined) requests are still to go out: they must not be cut or
            # interleaved, so this answer follows them (`on_response_complete`); nothing is read meanwhile.
            self._deferred = (status, text)
            self.flow.pause_reading()
            return
        self._answer(status, text)

    def _answer(self, status: int, text: str) -> None:
        if status == 431:
            self.logger.warning("%s - request head too large (431): %s", self._peer, text)
        else:
            self.logger.info("%s - request head too slow (408): %s", self._peer, text)
        body = (text + "\n").encode("ascii")
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self._close_lingering()

    @property
    def _peer(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "-"

    def _close_lingering(self) -> None:
        """Half-close once the answer is out, drop what still arrives for a moment, then close: closing
        with unread bytes would send a reset that can destroy the answer before the client reads it."""
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.flow.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)
