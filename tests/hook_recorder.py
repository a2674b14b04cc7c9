"""Finish hooks used by the tests, loaded by the server as `tests.hook_recorder:<name>`.

`record` appends one JSON line per event to the file named by TUSSERVER_TEST_HOOK_LOG, so a test can
count calls made inside another process. `blocking` waits until the test releases it; `failing` raises.
"""

from __future__ import annotations

import asyncio
import json
import os

from tusserver import FinishEvent

events: list[FinishEvent] = []
release = asyncio.Event()


def record(event: FinishEvent) -> None:
    """A synchronous hook (runs in a worker thread)."""
    events.append(event)
    log = os.environ.get("TUSSERVER_TEST_HOOK_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as file:
            file.write(json.dumps(event.as_json()) + "\n")


async def record_async(event: FinishEvent) -> None:
    events.append(event)


async def blocking(event: FinishEvent) -> None:
    events.append(event)
    await release.wait()


def failing(event: FinishEvent) -> None:
    raise RuntimeError(f"hook refuses upload {event.upload.id}")
