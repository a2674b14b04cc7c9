"""An ASGI app whose start-up always fails (lifespan.startup.failed): a worker that cannot start."""

from __future__ import annotations

from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "this app never starts"})
