"""The operations endpoints: `/metrics` (Prometheus text format), `/health/live` and `/health/ready`.
They take no `Tus-Resumable` header and answer plain HTTP; paths come from the settings.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tusserver import metrics
from tusserver.config import Settings
from tusserver.observed import Observer
from tusserver.statements import RETRY_AFTER_SECONDS

_NO_STORE = {"Cache-Control": "no-store"}


def _observer(request: Request) -> Observer:
    observer: Observer = request.app.state.observer
    return observer


async def scrape(request: Request) -> Response:
    observer = _observer(request)
    await observer.refresh()
    body = metrics.exposition([observer.registry()])
    return Response(body, media_type=CONTENT_TYPE_LATEST, headers=_NO_STORE)


async def live(request: Request) -> Response:
    """The process runs and its event loop answers: nothing else is checked (a database outage must
    not make Kubernetes restart every instance)."""
    return JSONResponse({"status": "live"}, headers=_NO_STORE)


async def ready(request: Request) -> Response:
    report = await _observer(request).readiness.check()
    if report.ready:
        return JSONResponse(report.as_json(), headers=_NO_STORE)
    headers = {**_NO_STORE, "Retry-After": RETRY_AFTER_SECONDS}
    return JSONResponse(report.as_json(), status_code=503, headers=headers)


def routes(settings: Settings) -> list[Route]:
    found = [
        Route(settings.health_path + "/live", live, methods=["GET", "HEAD"]),
        Route(settings.health_path + "/ready", ready, methods=["GET", "HEAD"]),
    ]
    if not settings.disable_metrics:
        found.append(Route(settings.metrics_path, scrape, methods=["GET", "HEAD"]))
    return found


def paths(settings: Settings) -> list[str]:
    """The paths these routes answer (exempt from the tus rules, logged quietly)."""
    return [str(route.path) for route in routes(settings)]
