"""Logging set-up: readable text lines (the default) or one JSON object per line (`--log-format json`),
and the request each line belongs to.

Log messages in this package are written as `event key=value ...`; the JSON formatter turns that into
`{"event": ..., "key": value, ...}` so both formats come from the same calls. The request being served
(`RequestContext`, made by `access.AccessLog` and set by `front.Front` in a context variable) adds its
`request_id` to every line logged while it runs.

A line costs little, because every request logs one: records skip what no format here shows (thread,
process, caller), the text format's timestamp is formatted once a second, and the lines logged on
the event loop reach stderr together, in one write at the end of the loop's turn (`BatchedLines`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import select
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_FIELD = re.compile(r"(?:^| )([a-z_][a-z0-9_]*)=(.*?)(?= [a-z_][a-z0-9_]*=|$)", re.DOTALL)
_INTEGER = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"-?[0-9]+\.[0-9]+")


class RequestContext:
    """One request, as its log lines and its access line describe it. `bytes_in`: the body bytes
    this request handed to storage (set once per body by the write path)."""

    __slots__ = ("bytes_in", "method", "path", "peer", "request_id", "upload_id")

    def __init__(self, request_id: str, method: str, path: str, peer: tuple[str, int] | None) -> None:
        self.request_id = request_id
        self.method = method
        self.path = path
        self.peer = peer
        self.upload_id: str | None = None
        self.bytes_in = 0

    @property
    def client(self) -> str:
        """`host:port` of the client, made only when a line or a page shows it."""
        peer = self.peer
        return f"{peer[0]}:{peer[1]}" if peer else ""


_current: ContextVar[RequestContext | None] = ContextVar("tusserver_request", default=None)


def current_request() -> RequestContext | None:
    return _current.get()


def enter_request(context: RequestContext) -> object:
    return _current.set(context)


def leave_request(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]


def note_upload(upload_id: str) -> None:
    """Name the upload the current request works on (for its log lines)."""
    context = _current.get()
    if context is not None:
        context.upload_id = upload_id


class _RequestFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        context = _current.get()
        record.request_id = context.request_id if context is not None else None
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)
        self._second = -1
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """`logging`'s default timestamp (`2026-12-04 16:18:57,123`), its seconds formatted once."""
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(record.created))
            self._second = second
        return f"{self._second_text},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        """`_TEXT_FORMAT`, filled in directly (as `logging.Formatter.format` would, at half the cost),
        then the request ID, then a traceback if any."""
        line = f"{self.formatTime(record)} {record.levelname} {record.name} {record.getMessage()}"
        request_id = getattr(record, "request_id", None)
        if request_id and "request_id=" not in line:
            line = f"{line} request_id={request_id}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, the message's key=value fields,
    request_id, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        event, _, rest = message.partition(" ")
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        fields = dict(_FIELD.findall(rest)) if "=" in rest else {}
        if record.name.startswith("tusserver") and re.fullmatch(r"[a-z_]+", event):
            entry["event"] = event
            if not fields and rest:
                entry["detail"] = rest
        else:  # uvicorn's and other libraries' prose
            entry["event"] = "log"
            entry["message"] = message
            fields = {}
        for key, value in fields.items():
            entry[key] = _typed(value)
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry.setdefault("request_id", request_id)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _typed(value: str) -> object:
    if _INTEGER.fullmatch(value):
        return int(value)
    if _DECIMAL.fullmatch(value):
        return float(value)
    if value == "None":
        return None
    return value


class BatchedLines(logging.StreamHandler):  # type: ignore[type-arg]
    """Lines logged on a running event loop are written together when the loop next gets round to
    it (one write for all the requests a turn of the loop answered, instead of one write a line);
    lines logged elsewhere (a thread, start-up, shutdown) are written at once. A line thus reaches
    stderr within one turn of the loop; `logging.shutdown` at exit writes what is left.

    Each write holds whole lines and at most `PIPE_BUF` bytes (a longer line goes alone), so that
    where several worker processes share one pipe (a container's stderr), the kernel never
    interleaves their writes inside a line."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._flush_on: asyncio.AbstractEventLoop | None = None
        """The loop a write of the waiting lines is scheduled on."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)
        loop = asyncio._get_running_loop()
        if loop is None:
            self.flush()
        elif loop is not self._flush_on:  # (a loop that closed before it wrote them no longer counts)
            self._flush_on = loop
            loop.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._flush_on = None
            self.flush()

    def flush(self) -> None:
        """Write the waiting lines."""
        with self.lock:  # type: ignore[union-attr]
            lines, self._lines = self._lines, []
            if not lines:
                return
            try:
                for chunk in _atomic_chunks(lines):
                    self.stream.write(chunk)
                    self.stream.flush()
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": lines[0]}))


def _atomic_chunks(lines: list[str]) -> Iterator[str]:
    """`lines`, newline-terminated, joined into pieces of at most `PIPE_BUF` bytes of whole lines."""
    chunk: list[str] = []
    size = 0
    for line in lines:
        length = (len(line) if line.isascii() else len(line.encode("utf-8", "replace"))) + 1
        if chunk and size + length > select.PIPE_BUF:
            yield "\n".join(chunk) + "\n"
            chunk, size = [], 0
        chunk.append(line)
        size += length
    if chunk:
        yield "\n".join(chunk) + "\n"


def configure(level: str, log_format: str = "text") -> None:
    """Send every log record to stderr in `log_format`, from `level` up (replaces earlier set-up,
    so calling it in each worker process is harmless). The process is the server's: its records
    skip the thread, process and caller lookups that no format here shows."""
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # no caller lookup (the Logging HOWTO's advice)
    handler = BatchedLines(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(_RequestFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per hook call: hook_* lines say it
    for name in ("uvicorn", "uvicorn.error"):  # through the root handler, in the same format
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    access = logging.getLogger("uvicorn.access")  # replaced by the app's `request` lines (access.py)
    access.handlers.clear()
    access.propagate = False
