"""Logging set-up: readable text lines (the default) or one JSON object per line (`--log-format json`),
and the request each line belongs to.

Log messages in this package are written as `event key=value ...`; the JSON formatter turns that into
`{"event": ..., "key": value, ...}` so both formats come from the same calls. The request being served
(`RequestContext`, set by `access.AccessMiddleware` in a context variable) adds its `request_id` to
every line logged while it runs.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_FIELD = re.compile(r"(?:^| )([a-z_][a-z0-9_]*)=(.*?)(?= [a-z_][a-z0-9_]*=|$)", re.DOTALL)
_INTEGER = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"-?[0-9]+\.[0-9]+")


@dataclass
class RequestContext:
    """One request, as its log lines and its access line describe it."""

    request_id: str
    method: str
    path: str
    client: str
    upload_id: str | None = None
    bytes_in: int = 0
    """Body bytes this request handed to storage (set once per body by the write path)."""


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

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} request_id={request_id}" if request_id and "request_id=" not in line else line


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


def configure(level: str, log_format: str = "text") -> None:
    """Send every log record to stderr in `log_format`, from `level` up (replaces earlier set-up,
    so calling it in each worker process is harmless)."""
    handler = logging.StreamHandler(sys.stderr)
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
