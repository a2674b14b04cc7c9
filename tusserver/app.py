"""`create_app(settings)`: the Starlette application, its routes, error mapping and lifespan.

The lifespan builds everything a request needs (engine and migrations, storage, locks, hooks) and
tears it down; `TusMiddleware` applies the protocol-wide rules; `TusError` becomes a short
`text/plain` response here and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tusserver import handlers
from tusserver.config import Settings
from tusserver.core import Hook
from tusserver.database import make_engine, migrate
from tusserver.errors import TusError
from tusserver.hooks import CallableHook, HookRunner, WebhookHook, load_callable
from tusserver.locking import UploadLocks, instance_name
from tusserver.middleware import TusMiddleware
from tusserver.storage import LocalStorage
from tusserver.store import SqlUploadStore
from tusserver.uploads import UploadService

log = logging.getLogger(__name__)
# Routes take every common method so that the handlers answer 405 with the right `Allow` (CR-14).
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def create_app(settings: Settings | None = None) -> Starlette:
    """The tus server as an ASGI application; `uvicorn` (or any ASGI server) runs it."""
    settings = settings or Settings()
    hooks = build_hooks(settings)  # fail at start-up, not at the first finished upload
    base = settings.base_path
    routes = [
        Route(base, handlers.collection, methods=_METHODS),
        Route(base + "{upload_id}", handlers.resource, methods=_METHODS),
    ]
    if base != "/":
        routes.insert(0, Route(base.rstrip("/"), handlers.collection, methods=_METHODS))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = make_engine(settings.resolved_database_url)
        await migrate(engine)
        store = SqlUploadStore(engine)
        runner = HookRunner(hooks)
        locks = UploadLocks(store, instance_name(), settings.lock_ttl, settings.lock_timeout)
        storage = LocalStorage(settings.uploads_dir)
        app.state.service = UploadService(store, storage, locks, runner, settings.max_size)
        log.info("started base_path=%s data_dir=%s", base, settings.data_dir)
        try:
            yield
        finally:
            await runner.aclose(settings.hook_timeout)
            await engine.dispose()

    app = Starlette(
        routes=routes,
        middleware=[Middleware(TusMiddleware)],
        exception_handlers={TusError: tus_error_response, Exception: internal_error_response},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # /files and /files/ are both routes (CR-13)
    app.state.settings = settings
    return app


def build_hooks(settings: Settings) -> list[Hook]:
    hooks: list[Hook] = []
    if settings.on_finish:
        hooks.append(CallableHook(load_callable(settings.on_finish)))
    if settings.webhook_url:
        hooks.append(WebhookHook(settings.webhook_url, settings.hook_timeout))
    return hooks


async def tus_error_response(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, TusError)
    body = "" if request.method == "HEAD" else exc.message + "\n"
    return PlainTextResponse(body, status_code=exc.status, headers=exc.headers)


async def internal_error_response(request: Request, exc: Exception) -> Response:
    upload_id = request.path_params.get("upload_id", "-")
    log.error("internal_error upload_id=%s error=%r", upload_id, exc)
    body = "" if request.method == "HEAD" else "internal server error\n"
    return PlainTextResponse(body, status_code=500)
