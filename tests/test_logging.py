"""`--log-format json` and request IDs (issue 11): every line of a real server's log parses as JSON,
carries the event name and the request's ID (the client's `X-Request-ID` or a generated one, echoed
in the response); upload URLs with their host never reach the log; the text format stays readable."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import select
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import app_client
from tests.helpers import BASE
from tests.servers import ServerProcess
from tusserver import Settings
from tusserver.logs import BatchedLines, TextFormatter

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}


def _server(tmp_path: Path, *args: str) -> ServerProcess:
    server = ServerProcess(tmp_path / "data", f"sqlite:///{tmp_path / 'db.sqlite'}", args)
    server.start()
    return server


def _traffic(server: ServerProcess) -> tuple[str, str]:
    """A creation with a client request ID and a PATCH without one; (upload URL, the PATCH's ID)."""
    created = httpx.post(server.url, headers={**TUS, "Upload-Length": "10", "X-Request-ID": "client-id-1"})
    assert created.headers["X-Request-ID"] == "client-id-1"
    location = created.headers["Location"]
    patched = httpx.patch(location, content=b"0123456789", headers={**OCTETS, "Upload-Offset": "0"})
    assert patched.status_code == 204
    generated = patched.headers["X-Request-ID"]
    assert len(generated) == 16
    odd = httpx.head(location, headers={**TUS, "X-Request-ID": "spaces and\ttabs"})
    assert odd.headers["X-Request-ID"] != "spaces and\ttabs"  # not echoed into logs as given
    root = f"http://127.0.0.1:{server.port}"
    assert httpx.get(root + "/health/live").status_code == 200  # probes and scrapes: debug only
    assert httpx.get(root + "/metrics").status_code == 200
    return location, generated


def test_json_log_lines_parse_and_carry_request_ids(tmp_path: Path) -> None:
    server = _server(tmp_path, "--log-format", "json")
    try:
        location, patch_id = _traffic(server)
    finally:
        server.stop()
    text = server.log()
    entries: list[dict[str, Any]] = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all({"time", "level", "logger", "event"} <= entry.keys() for entry in entries)
    upload_id = location.rsplit("/", 1)[1]
    requests = [entry for entry in entries if entry["event"] == "request"]
    created = next(entry for entry in requests if entry["method"] == "POST")
    assert created["request_id"] == "client-id-1"
    assert created["status"] == 201
    assert created["upload_id"] == upload_id
    assert created["path"] == "/files/"
    assert isinstance(created["duration_ms"], float)
    patched = next(entry for entry in requests if entry["method"] == "PATCH")
    assert (patched["request_id"], patched["status"], patched["bytes"]) == (patch_id, 204, 10)
    assert patched["upload_id"] == upload_id
    events = {(entry["event"], entry.get("request_id")) for entry in entries}
    assert ("upload_created", "client-id-1") in events
    assert ("upload_finished", patch_id) in events
    assert not any(entry.get("path") in {"/health/live", "/metrics"} for entry in entries)
    assert location not in text  # an upload URL is a credential: never logged with its host
    assert f"127.0.0.1:{server.port}/files/" not in text


def test_text_log_stays_readable(tmp_path: Path) -> None:
    server = _server(tmp_path)
    try:
        location, patch_id = _traffic(server)
    finally:
        server.stop()
    lines = server.log().splitlines()
    patch_line = next(line for line in lines if " request method=PATCH" in line)
    assert "status=204 bytes=10" in patch_line
    assert f"request_id={patch_id}" in patch_line
    assert any("upload_created" in line and "request_id=client-id-1" in line for line in lines)
    assert location not in server.log()
    assert not any(line.lstrip().startswith("{") for line in lines)


@pytest.mark.anyio
async def test_browsers_can_read_the_request_id(tmp_path: Path) -> None:
    async with app_client(Settings(data_dir=tmp_path / "data")) as http:
        answer = await http.post(BASE, headers={"Upload-Length": "1", "Origin": "https://app.example"})
    assert answer.status_code == 201
    assert "X-Request-ID" in answer.headers["Access-Control-Expose-Headers"]
    assert answer.headers["X-Request-ID"]


class _CountingStream(io.StringIO):
    """A stream that remembers each write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def _record(message: str, created: float = 1_764_000_000.25) -> logging.LogRecord:
    record = logging.LogRecord("tusserver.test", logging.INFO, __file__, 1, message, (), None)
    record.created, record.msecs = created, 250.0
    return record


@pytest.mark.anyio
async def test_lines_logged_in_one_turn_of_the_loop_are_written_together() -> None:
    stream = _CountingStream()
    handler = BatchedLines(stream)
    for number in range(3):
        handler.handle(_record(f"line {number}"))
    assert stream.writes == []  # not yet: the loop has not come round
    await asyncio.sleep(0)
    assert stream.writes == ["line 0\nline 1\nline 2\n"]
    handler.handle(_record("line 3"))
    await asyncio.sleep(0)
    assert stream.writes[1:] == ["line 3\n"]


@pytest.mark.anyio
async def test_each_write_is_whole_lines_within_pipe_buf() -> None:
    """Workers sharing one pipe never tear each other's lines: the kernel keeps a write of at most
    PIPE_BUF bytes together."""
    stream = _CountingStream()
    handler = BatchedLines(stream)
    lines = [f"request number={number} " + "x" * 200 for number in range(100)]
    lines[50] = "long " + "y" * (2 * select.PIPE_BUF)
    lines[60] = "ünïcödé " * 300  # counted in bytes, not characters
    for line in lines:
        handler.handle(_record(line))
    await asyncio.sleep(0)
    assert len(stream.writes) > 1
    assert "".join(stream.writes) == "".join(line + "\n" for line in lines)
    for write in stream.writes:
        assert write.endswith("\n")
        assert len(write.encode()) <= select.PIPE_BUF or write.count("\n") == 1


def test_lines_left_by_a_loop_that_ended_are_written_by_the_next() -> None:
    stream = _CountingStream()
    handler = BatchedLines(stream)

    async def log_and_leave(message: str) -> None:
        handler.handle(_record(message))

    def log_and_stop() -> None:
        handler.handle(_record("first"))
        loop.stop()  # this turn is the loop's last: the write it scheduled never runs

    loop = asyncio.new_event_loop()
    loop.call_soon(log_and_stop)
    loop.run_forever()
    loop.close()
    assert stream.writes == []
    asyncio.run(log_and_leave("second"))
    assert stream.writes == ["first\nsecond\n"]


def test_lines_still_waiting_at_exit_are_written() -> None:
    stream = _CountingStream()
    handler = BatchedLines(stream)

    def log_and_stop() -> None:
        handler.handle(_record("last words"))
        loop.stop()

    loop = asyncio.new_event_loop()
    loop.call_soon(log_and_stop)
    loop.run_forever()
    loop.close()
    assert stream.writes == []
    logging.shutdown([weakref.ref(handler)])  # what the interpreter runs at exit
    assert stream.writes == ["last words\n"]


def test_lines_logged_off_the_loop_are_written_at_once() -> None:
    stream = _CountingStream()
    handler = BatchedLines(stream)
    worker = threading.Thread(target=handler.handle, args=(_record("from a thread"),))
    worker.start()
    worker.join()
    handler.handle(_record("no loop here"))
    assert stream.writes == ["from a thread\n", "no loop here\n"]


def test_text_lines_match_the_standard_format() -> None:
    standard = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    ours = TextFormatter()
    for created in (1_764_000_000.25, 1_764_000_000.999, 1_764_000_001.0):
        record = _record("upload_created upload_id=abc", created)
        record.msecs = (created - int(created)) * 1000
        assert ours.format(record) == standard.format(record)
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("t", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    failed.request_id = "r-1"
    lines = ours.format(failed).splitlines()
    assert lines[0].endswith("ERROR t failed request_id=r-1")
    assert lines[-1] == "ValueError: boom"
