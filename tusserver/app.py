"""`create_app(settings)`: the Starlette application, its routes, error mapping and lifespan.

The lifespan starts what `runtime.running` assembles (engine and migrations, storage, locks, hooks,
the upload service) plus the expiry sweeper, and tears them down; `Front` takes every HTTP request
through the steps that hold for all of them (access log, CORS, tus rules, the last-resort 500) to
`TusEndpoint`, which routes the upload requests (and turns a `TusError` into its short `text/plain`
answer), or to Starlette's routes.
`app_from_env` is the factory uvicorn workers load.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from tusserver import demo, logs, metrics, ops
from tusserver.access import AccessLog
from tusserver.admin import AdminPage
from tusserver.allocator import tune_malloc
from tusserver.config import Settings
from tusserver.cors import Cors
from tusserver.endpoint import TusEndpoint, error_response
from tusserver.errors import TusError
from tusserver.front import Front
from tusserver.health import Readiness
from tusserver.middleware import Receive, Scope, Send, TusRules
from tusserver.observed import Observer
from tusserver.runtime import build_hooks, running
from tusserver.storage import check_storage
from tusserver.uploads import UploadService

log = logging.getLogger(__name__)


def app_from_env() -> Starlette:
    """Factory for ASGI servers: `uvicorn --factory tusserver.app:app_from_env` (settings from
    `TUSSERVER_*`). The app owns its process: it asks in-flight uploads to finish early on SIGTERM /
    SIGINT and settles the garbage collector once started."""
    settings = Settings.from_env()
    logs.configure(settings.log_level, settings.log_format)  # each worker process sets up its own
    return create_app(settings, owns_process=True)


def create_app(
    settings: Settings | None = None, owns_process: bool = False, hooks: object | None = None
) -> Starlette:
    """The tus server as an ASGI application; `uvicorn` (or any ASGI server) runs it. `hooks`: an
    object with a method per hook event, as `--hooks-python` takes. `owns_process`: signals and the
    garbage collector are the app's to handle (`tusserver serve`), not an embedding program's."""
    settings = settings or Settings()
    tune_malloc()  # every process that serves, workers and embedders too (allocator.py)
    built = build_hooks(settings, hooks)  # fail at start-up, not at the first finished upload
    check_storage(settings)
    base = settings.base_path
    ops_paths = ops.paths(settings)
    admin = AdminPage(settings, settings.admin_token) if settings.admin_token else None
    exempt = [*ops_paths, settings.admin_path] if admin else ops_paths
    routes = [
        *(demo.routes(settings) if settings.demo else []),
        *ops.routes(settings),
        *(admin.routes() if admin else []),
    ]  # the tus endpoint is `TusEndpoint`'s; these win where a path is theirs too (`/demo/`, ...)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with running(settings, built) as runtime:
            assert isinstance(app, Application)
            app.state.service = app.service = service = runtime.service
            readiness = Readiness(service.records, service.storage, settings.database_timeout)
            app.state.observer = observer = Observer(service.records, service.storage, readiness)
            sampling = asyncio.create_task(observer.sample())
            if owns_process:
                _stop_uploads_on_signals(runtime.service.locks.stop_all)
            sweeping = None
            if settings.cleanup_interval > 0:
                sweeping = asyncio.create_task(runtime.sweeper.run(settings.cleanup_interval))
            log.info("started base_path=%s data_dir=%s", base, settings.data_dir)
            if owns_process:
                _settle_garbage_collector()
            try:
                yield
            finally:
                for task in (sweeping, sampling):
                    if task is not None:
                        task.cancel()
                        await asyncio.gather(task, return_exceptions=True)
                metrics.process_ended()

    app = Application(
        routes=routes,
        exception_handlers={TusError: tus_error_response},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # /files and /files/ are both the collection (CR-13)
    app.state.settings = app.settings = settings
    app.front = Front(
        AccessLog(quiet_paths=ops_paths),
        Cors(origins=settings.cors_origins, allow_credentials=settings.cors_allow_credentials),
        TusRules(exempt_paths=exempt),
        TusEndpoint(base, routes),
        rest=app.other_routes,
    )
    return app


class Application(Starlette):
    """Starlette for the lifespan and the routes beside the endpoint (probes, metrics, operator
    page, demo); every HTTP request goes to `front` (access log and metrics, CORS, tus rules,
    last-resort 500), which hands it to `TusEndpoint` or, if its path is not the endpoint's, to
    Starlette's router (`other_routes`)."""

    front: Front | None = None
    settings: Settings
    service: UploadService
    """Also in `state`; read as plain attributes by the handlers (`state` looks each name up through
    `__getattr__`, a few microseconds a request)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.front is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        await self.front(scope, receive, send)

    async def other_routes(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Starlette's own stack, for the paths that are not the tus endpoint's."""
        await super().__call__(scope, receive, send)


def _settle_garbage_collector() -> None:
    """Free start-up's garbage now, in one collection, and take what start-up built (modules, the
    engine, compiled statements: some 70,000 objects) out of the collector's way: a full collection
    then looks only at objects made since (with them it took 30 ms on the loop). Requests themselves
    leave no reference cycles (a test checks), so collections stay rare."""
    gc.collect()
    gc.freeze()


def _stop_uploads_on_signals(stop_all: Callable[[], None]) -> None:
    """Chain onto the ASGI server's SIGTERM/SIGINT handlers: before it starts waiting for requests
    to end, ask every upload in flight to commit what it has and answer (graceful shutdown)."""
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(number)

        def handler(received: int, frame: FrameType | None, previous: object = previous) -> None:
            log.info("shutdown_requested signal=%d", received)
            loop.call_soon_threadsafe(stop_all)
            if callable(previous):
                previous(received, frame)

        signal.signal(number, handler)


async def tus_error_response(request: Request, exc: Exception) -> Response:
    """A `TusError` raised on one of Starlette's routes (the operator page's)."""
    assert isinstance(exc, TusError)
    return error_response(request.method, exc)
