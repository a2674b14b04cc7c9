"""The `--demo` upload page: Uppy's Dashboard and Tus plugin on `/demo/`, off by default.

The page (`index.html`) and the Uppy bundle (`static/uppy.min.mjs`, `static/uppy.min.css`, copied
from the npm package pinned in `web/package-lock.json`) ship inside the package: no CDN. The page
uploads to this server's tus endpoint, or to the one its `?endpoint=` query names (another origin
works: CORS), with `?chunkSize=<bytes>` and `?protocol=tus-v1|ietf-draft-03|ietf-draft-05` passed to
Uppy's Tus plugin.
"""

from __future__ import annotations

import html
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

from tusserver.config import Settings

HERE = Path(__file__).resolve().parent
PATH = "/demo/"
_ASSETS = {
    "uppy.min.mjs": "text/javascript; charset=utf-8",
    "uppy.min.css": "text/css; charset=utf-8",
}
_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def routes(settings: Settings) -> list[Route]:
    """The page and its two assets (explicit types: `.mjs` is not in every `mimetypes` table)."""
    page = (HERE / "index.html").read_text(encoding="utf-8")
    endpoint = settings.root_path.rstrip("/") + settings.base_path

    async def index(request: Request) -> Response:
        return HTMLResponse(page.replace("{{ENDPOINT}}", html.escape(endpoint)), headers=_HEADERS)

    def asset(name: str, media_type: str) -> Route:
        async def serve(request: Request) -> Response:
            return FileResponse(HERE / "static" / name, media_type=media_type, headers=_HEADERS)

        return Route(PATH + name, serve, methods=["GET", "HEAD"])

    return [
        Route(PATH, index, methods=["GET", "HEAD"]),
        *(asset(name, media_type) for name, media_type in _ASSETS.items()),
    ]
