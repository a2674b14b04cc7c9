"""What this process is doing, for the operator page: the request bodies streaming in now (with a live
count of their bytes) and the uploads that recently finished or whose request failed.

The write path registers a body once when it starts and once when it ends; the live byte count is the
writer loop's own counter, read only when the page asks. Nothing here runs per chunk.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from tusserver.core import Upload, utcnow
from tusserver.logs import current_request

RECENT = 50
"""Finished and failed uploads remembered, newest first."""


class Counting(Protocol):
    """Something that counts the bytes of one body as they arrive (the write path's `_Run`)."""

    received: int


@dataclass
class Active:
    upload: Upload
    """The upload when its body began."""
    counter: Counting
    client: str
    started: float
    """`time.monotonic()` when the body began."""


@dataclass(frozen=True)
class Ended:
    upload_id: str
    length: int | None
    offset: int
    outcome: str
    """`finished`, or the cause of a failure (`disconnect`, `conflict`, `storage`, ...)."""
    at: datetime
    client: str


class Activity:
    def __init__(self) -> None:
        self.active: dict[int, Active] = {}
        self.recent: deque[Ended] = deque(maxlen=RECENT)

    def begin(self, upload: Upload, counter: Counting) -> int:
        """A body starts streaming; returns the token that ends it."""
        context = current_request()
        token = id(counter)
        self.active[token] = Active(upload, counter, context.client if context else "", time.monotonic())
        return token

    def end(self, token: int) -> None:
        self.active.pop(token, None)

    def finished(self, upload: Upload) -> None:
        self._ended(upload.id, upload.length, upload.offset, "finished")

    def failed(self, upload_id: str, cause: str, upload: Upload | None = None) -> None:
        length, offset = (upload.length, upload.offset) if upload else (None, -1)
        self._ended(upload_id, length, offset, cause)

    def _ended(self, upload_id: str, length: int | None, offset: int, outcome: str) -> None:
        context = current_request()
        client = context.client if context else ""
        self.recent.appendleft(Ended(upload_id, length, offset, outcome, utcnow(), client))
