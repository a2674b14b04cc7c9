"""`tusserver serve` with the POST and HEAD handlers answering constants: the cost of everything
around a small request (uvicorn, the connection protocol, the access log, CORS, the tus rules, the
endpoint's routing and the answer), without the upload service and the database.

    python bench/floor_server.py serve --port 8080 --data-dir /tmp/floor   # then drive it, e.g.
    python ../shared/bench/tusbench.py w3 --endpoint http://127.0.0.1:8080/files/ --pid <its PID>

A POST answers 201 with a new relative `Location` (nothing is stored) and a HEAD 200 with fixed
offsets; every other request is the server's own. The ratio of its W3 to the full server's shows how
much of a POST + HEAD cycle the upload logic and the database take, and its ratio to `base-asgi` how
far any handler could bring the whole server. One worker only (`--workers` processes would import
the real handlers afresh). Not for serving anything.
"""

from __future__ import annotations

import itertools

from starlette.requests import Request
from starlette.responses import Response

from tusserver import cli, handlers
from tusserver.protocol import LOCATION, UPLOAD_LENGTH, UPLOAD_OFFSET

_numbers = itertools.count()


async def constant_create(request: Request) -> Response:
    location = request.scope["path"].rstrip("/") + f"/{next(_numbers):032x}"  # relative, as base-asgi's
    return handlers.HeadersOnly(201, {LOCATION: location, UPLOAD_OFFSET: "0"})


async def constant_head(request: Request, upload_id: str) -> Response:
    return handlers.HeadersOnly(200, {UPLOAD_OFFSET: "0", UPLOAD_LENGTH: "1024", "Cache-Control": "no-store"})


def use_constant_handlers() -> None:
    """Replace POST's and HEAD's handlers (`collection` and `resource` look both up when called);
    refuse to run if they are gone, as the real ones would then silently stay in."""
    if not (hasattr(handlers, "create") and hasattr(handlers, "head")):
        raise SystemExit("bench: tusserver.handlers has no create/head; update bench/floor_server.py")
    handlers.create = constant_create
    handlers.head = constant_head


if __name__ == "__main__":
    use_constant_handlers()
    raise SystemExit(cli.main())
