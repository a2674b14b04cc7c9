"""The operator page at `--admin-path` (only with `--admin-token`): a server-rendered page plus a small
script (shipped in the package: no build step, no CDN) that polls `<admin>/state.json` every second
for uploads in progress with live progress, recently finished and failed ones, unfinished uploads
longest idle first with a delete button, disk space and hook backlog.

Every admin URL needs the token, as `Authorization: Bearer <token>` or the cookie the login form sets
(an HMAC of the token, HttpOnly, SameSite=Strict, limited to the admin path).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import time
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from tusserver.activity import Active, Ended
from tusserver.config import Settings
from tusserver.core import Upload, is_upload_id, utcnow
from tusserver.errors import TusError
from tusserver.observed import Observer
from tusserver.protocol import metadata_text
from tusserver.uploads import UploadService

COOKIE = "tusserver_admin"
LISTED = 100
"""Unfinished uploads listed at most."""
LIST_EVERY = 3.0
"""Seconds the list of unfinished uploads is reused (a query that scans them), whatever the number
of open pages; a delete from the page refreshes it at once."""
_ASSETS = {"admin.js": "text/javascript", "admin.css": "text/css"}
_NO_STORE = {"Cache-Control": "no-store"}


def _asset(name: str) -> str:
    return (resources.files("tusserver") / "admin_assets" / name).read_text(encoding="utf-8")


def _session(token: str) -> str:
    return hmac.new(token.encode(), b"tusserver-admin-session", hashlib.sha256).hexdigest()


def _allowed(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), _session(token).encode())


class AdminPage:
    def __init__(self, settings: Settings, token: str) -> None:
        self.path = settings.admin_path
        self.token = token
        self._listed: list[tuple[Upload, bool]] = []
        self._listed_at = -LIST_EVERY

    def routes(self) -> list[Route]:
        return [
            Route(self.path, self.page, methods=["GET"]),
            Route(self.path + "/login", self.login, methods=["POST"]),
            Route(self.path + "/state.json", self.state, methods=["GET"]),
            Route(self.path + "/uploads/{upload_id}", self.delete, methods=["DELETE"]),
            Route(self.path + "/assets/{name}", self.asset, methods=["GET"]),
        ]

    async def page(self, request: Request) -> Response:
        if not _allowed(request, self.token):
            return self._login_form(401)
        text = _asset("page.html").replace("{{admin}}", html.escape(self.path))
        return HTMLResponse(text, headers=_NO_STORE)

    def _login_form(self, status: int, wrong: bool = False) -> Response:
        text = _asset("login.html").replace("{{admin}}", html.escape(self.path))
        text = text.replace("{{message}}", "Wrong token." if wrong else "")
        return HTMLResponse(text, status_code=status, headers=_NO_STORE)

    async def login(self, request: Request) -> Response:
        body = (await request.body())[:4096].decode("utf-8", "replace")
        given = parse_qs(body).get("token", [""])[0]
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return self._login_form(401, wrong=True)
        answer = RedirectResponse(self.path, status_code=303)
        secure = request.url.scheme == "https"
        answer.set_cookie(
            COOKIE, _session(self.token), path=self.path, httponly=True, samesite="strict", secure=secure
        )
        return answer

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _ASSETS:
            return Response("not found\n", status_code=404, media_type="text/plain")
        return Response(_asset(name), media_type=_ASSETS[name], headers={"Cache-Control": "max-age=300"})

    async def state(self, request: Request) -> Response:
        if not _allowed(request, self.token):
            return JSONResponse({"error": "token required"}, status_code=401)
        service: UploadService = request.app.state.service
        observer: Observer = request.app.state.observer
        state = await observer.refresh()
        activity = service.pipeline.activity
        active = list(activity.active.values())
        here = {entry.upload.id for entry in active}
        try:
            if time.monotonic() - self._listed_at >= LIST_EVERY:
                self._listed = await service.records.incomplete(LISTED)
                self._listed_at = time.monotonic()
            listed: list[dict[str, Any]] | None = [
                _unfinished(upload, held) for upload, held in self._listed if upload.id not in here
            ]
        except TusError:
            listed = None  # the database is away: the rest of the page still says something
        disk = state.disk
        return JSONResponse(
            {
                "now": utcnow().isoformat(),
                "in_progress": [_in_progress(entry) for entry in active],
                "recent": [_ended(entry) for entry in activity.recent],
                "unfinished": listed,
                "disk": None if disk is None else {
                    "size": disk.size, "free": disk.available, "reserve": disk.reserve,
                },
                "hooks": state.backlog,
                "ready": None if state.ready is None else state.ready.as_json(),
            },
            headers=_NO_STORE,
        )  # fmt: skip

    async def delete(self, request: Request) -> Response:
        if not _allowed(request, self.token):
            return JSONResponse({"error": "token required"}, status_code=401)
        upload_id = request.path_params["upload_id"]
        if not is_upload_id(upload_id):
            return JSONResponse({"error": "not an upload ID"}, status_code=404)
        service: UploadService = request.app.state.service
        try:
            await service.terminate(upload_id)
        except TusError as problem:
            return JSONResponse(
                {"error": problem.message}, status_code=problem.status, headers=problem.headers
            )
        self._listed_at = -LIST_EVERY  # the next poll lists afresh
        return Response(status_code=204)


def _name(upload: Upload) -> str:
    return metadata_text(upload.metadata).get("filename", "")


def _in_progress(entry: Active) -> dict[str, Any]:
    upload = entry.upload
    return {
        "id": upload.id,
        "name": _name(upload),
        "length": upload.length,
        "offset": upload.offset + entry.counter.received,
        "client": entry.client,
        "created_at": upload.created_at.isoformat(),
        "body_started_s_ago": round(time.monotonic() - entry.started, 3),
        "body_bytes": entry.counter.received,
    }


def _ended(entry: Ended) -> dict[str, Any]:
    return {
        "id": entry.upload_id,
        "length": entry.length,
        "offset": entry.offset,
        "outcome": entry.outcome,
        "at": entry.at.isoformat(),
        "client": entry.client,
    }


def _unfinished(upload: Upload, held: bool) -> dict[str, Any]:
    now = utcnow()
    return {
        "id": upload.id,
        "name": _name(upload),
        "length": upload.length,
        "offset": upload.offset,
        "created_at": upload.created_at.isoformat(),
        "idle_s": round((now - upload.updated_at).total_seconds()),
        "expired": upload.expires_at is not None and upload.expires_at <= now,
        "held": held,
    }
