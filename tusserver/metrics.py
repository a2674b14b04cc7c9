"""The process's Prometheus metrics (prometheus-client): every counter, histogram and gauge the code
increments, and the text the `/metrics` endpoint serves.

Metrics are module-level, as prometheus-client intends. With `--workers N` the `tusserver serve`
command sets `PROMETHEUS_MULTIPROC_DIR` before the workers start, so each worker's values live in
memory-mapped files there and a scrape of any worker adds them all up (`MultiProcessCollector`).
Counting is cheap by design: the write path counts once per request body (and at its checkpoints),
never per chunk, and the per-request series are plain Python counts read at scrape time
(`RequestTally`; with workers, the shared values). What comes from the database or the disk
(incomplete uploads, hook backlog, free space) is not here but in `observed.py`, computed at scrape
time from a cache.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.utils import floatToGoString

from tusserver.core import Upload, utcnow
from tusserver.errors import StorageUnavailable, TusError, UploadDataLost

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MULTIPROCESS = MULTIPROC_ENV in os.environ
"""Chosen once, at import: prometheus-client picks its value store the same way."""
_REGISTRY = None if MULTIPROCESS else CollectorRegistry(auto_describe=True)
if _REGISTRY is not None:  # the standard `process_*` and `python_gc_*` series (one process only)
    ProcessCollector(registry=_REGISTRY)
    GCCollector(registry=_REGISTRY)
disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series beside each counter: they double the output for nothing

_FAST = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LONG = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
_UPLOAD_TIME = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
_MiB = 1024 * 1024
_SIZES = (64 * 1024, _MiB, 10 * _MiB, 100 * _MiB, 1024 * _MiB, 10 * 1024 * _MiB, 100 * 1024 * _MiB)
SIZE_CLASSES = ((_MiB, "0-1MiB"), (10 * _MiB, "1-10MiB"), (100 * _MiB, "10-100MiB"),
                (1024 * _MiB, "100MiB-1GiB"), (10 * 1024 * _MiB, "1-10GiB"))  # fmt: skip
LARGEST_CLASS = "10GiB+"

_REQUESTS_HELP = "HTTP requests answered, by method and status."
_REQUEST_DURATION_HELP = "Time to answer a request other than PATCH, by method."
_PATCH_DURATION_HELP = "Time a PATCH request took, from its headers to its answer (it streams for minutes)."
uploads_created = Counter("tusserver_uploads_created", "Uploads created.", registry=_REGISTRY)
uploads_finished = Counter("tusserver_uploads_finished", "Uploads completed.", registry=_REGISTRY)
uploads_terminated = Counter(
    "tusserver_uploads_terminated", "Uploads deleted by DELETE (or assembled partials).", registry=_REGISTRY
)
uploads_expired = Counter(
    "tusserver_uploads_expired", "Expired uploads the sweeper deleted (abandoned or past retention).",
    registry=_REGISTRY,
)  # fmt: skip
upload_duration = Histogram(
    "tusserver_upload_duration_seconds",
    "Time from creation to completion of a finished upload, by size class of the file.",
    ["size_class"], buckets=_UPLOAD_TIME, registry=_REGISTRY,
)  # fmt: skip
upload_size = Histogram(
    "tusserver_upload_size_bytes", "Size of finished uploads.", buckets=_SIZES, registry=_REGISTRY
)
bytes_received = Counter(
    "tusserver_received_bytes", "Upload bytes read from clients and handed to storage.", registry=_REGISTRY
)
bytes_committed = Counter(
    "tusserver_committed_bytes",
    "Upload bytes that became part of a committed offset (received minus what interruptions cost).",
    registry=_REGISTRY,
)
patch_failures = Counter(
    "tusserver_patch_failures",
    "PATCH requests that did not complete their body, by cause (conflict = 409, checksum = 460, ...).",
    ["cause"], registry=_REGISTRY,
)  # fmt: skip
bodies_in_progress = Gauge(
    "tusserver_uploads_in_progress", "Request bodies being received right now.",
    registry=_REGISTRY, multiprocess_mode="livesum",
)  # fmt: skip
lock_waits = Counter(
    "tusserver_lock_waits", "Requests that found their upload leased and had to wait.", registry=_REGISTRY
)
lock_takeovers = Counter(
    "tusserver_lock_takeovers", "Requests that asked the holder of an upload's lease to let go.",
    registry=_REGISTRY,
)  # fmt: skip
hook_deliveries = Counter(
    "tusserver_hook_deliveries",
    "Durable hook delivery attempts by result: delivered, retry (failed, will retry), dead (gave up).",
    ["result"], registry=_REGISTRY,
)  # fmt: skip
database_pool_in_use = Gauge(
    "tusserver_database_pool_connections_in_use",
    "Database connections checked out of this server's pools (PostgreSQL; sampled every few seconds).",
    registry=_REGISTRY, multiprocess_mode="livesum",
)  # fmt: skip

_CAUSES: dict[int, str] = {
    400: "bad_request", 403: "forbidden", 404: "not_found", 408: "timeout", 409: "conflict",
    410: "gone", 413: "too_large", 415: "bad_request", 423: "locked", 460: "checksum",
    503: "unavailable", 507: "storage_full",
}  # fmt: skip


class RequestTally:
    """The request series (`tusserver_http_requests_total` and the two duration histograms) of one
    process, counted in plain Python on the event loop (no lock: `count` is called there only) and
    read at scrape time (`collect`).
    prometheus-client locks a value for every increment: a request's four locked increments were
    4.5 % of the instructions of a POST + HEAD. With `--workers` the series must add up across the
    workers, so there they are prometheus-client's own shared values (`SharedRequestSeries`)."""

    def __init__(self) -> None:
        self.answered: dict[tuple[str, str], int] = {}
        self.durations: dict[str, list[float]] = {}
        """Per method: how many answers fell in each bucket (not cumulative; the last is +Inf), then
        the sum of their durations."""

    def count(self, method: str, status: str, seconds: float) -> None:
        key = (method, status)
        answered = self.answered
        answered[key] = answered.get(key, 0) + 1
        bounds = _bounds(method)
        durations = self.durations.get(method) or self.durations.setdefault(method, _empty(bounds))
        durations[bisect.bisect_left(bounds, seconds)] += 1
        durations[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("tusserver_http_requests", _REQUESTS_HELP, labels=["method", "status"])
        for labels, count in self.answered.items():
            requests.add_metric(labels, count)
        yield requests
        timed = HistogramMetricFamily(
            "tusserver_http_request_duration_seconds", _REQUEST_DURATION_HELP, labels=["method"]
        )
        for method, durations in self.durations.items():
            if method != "PATCH":
                timed.add_metric([method], _cumulative(_FAST, durations), durations[-1])
        yield timed
        patches = HistogramMetricFamily("tusserver_patch_duration_seconds", _PATCH_DURATION_HELP)
        durations = self.durations.get("PATCH") or _empty(_LONG)
        patches.add_metric([], _cumulative(_LONG, durations), durations[-1])
        yield patches


def _bounds(method: str) -> tuple[float, ...]:
    return _LONG if method == "PATCH" else _FAST


def _empty(bounds: Sequence[float]) -> list[float]:
    """No answer yet: a zero per bucket, +Inf's too, and a zero sum."""
    return [0.0] * (len(bounds) + 2)


def _cumulative(bounds: Sequence[float], durations: Sequence[float]) -> list[tuple[str, float]]:
    """Histogram buckets as the exposition has them: `le` bounds with cumulative counts."""
    names = [*map(floatToGoString, bounds), "+Inf"]
    return list(zip(names, itertools.accumulate(durations[:-1]), strict=True))


class SharedRequestSeries:
    """The request series as prometheus-client's multiprocess values (`--workers`)."""

    def __init__(self) -> None:
        self.requests = Counter(
            "tusserver_http_requests", _REQUESTS_HELP, ["method", "status"], registry=None
        )
        self.request_duration = Histogram(
            "tusserver_http_request_duration_seconds", _REQUEST_DURATION_HELP, ["method"],
            buckets=_FAST, registry=None,
        )  # fmt: skip
        self.patch_duration = Histogram(
            "tusserver_patch_duration_seconds", _PATCH_DURATION_HELP, buckets=_LONG, registry=None
        )
        self._requests_of = functools.lru_cache(maxsize=1024)(self.requests.labels)
        self._duration_of = functools.lru_cache(maxsize=64)(self.request_duration.labels)
        """`labels()` costs more than the increment: looked up once per label set."""

    def count(self, method: str, status: str, seconds: float) -> None:
        self._requests_of(method, status).inc()
        if method == "PATCH":
            self.patch_duration.observe(seconds)
        else:
            self._duration_of(method).observe(seconds)


if _REGISTRY is None:
    request_answered: Callable[[str, str, float], None] = SharedRequestSeries().count
else:
    _tally = RequestTally()
    _REGISTRY.register(_tally)
    request_answered = _tally.count
"""Count one answered request (`method` one of a fixed set, `status` its code or "none")."""


def failure_cause(problem: TusError) -> str:
    """The `cause` label of a failed PATCH from its error (a storage error is told apart from a
    database outage, both 503, and from an expired upload, both 410)."""
    if isinstance(problem, StorageUnavailable | UploadDataLost):
        return "storage"
    return _CAUSES.get(problem.status, "other")


def cause_of_status(status: int) -> str:
    """The `cause` label of a failed PATCH answered with `status` (an IETF problem document)."""
    return _CAUSES.get(status, "other")


def size_class(length: int) -> str:
    for limit, name in SIZE_CLASSES:
        if length < limit:
            return name
    return LARGEST_CLASS


def upload_finished(upload: Upload) -> None:
    """A finished upload: counted, with its size and its time from creation to completion."""
    uploads_finished.inc()
    upload_size.observe(upload.offset)
    seconds = max(((upload.completed_at or utcnow()) - upload.created_at).total_seconds(), 0.0)
    upload_duration.labels(size_class(upload.offset)).observe(seconds)


def exposition(extra: Iterable[CollectorRegistry] = ()) -> bytes:
    """This process's (or, with workers, every worker's) metrics plus `extra`, in the text format."""
    if MULTIPROCESS:
        combined = CollectorRegistry()
        MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
        text = generate_latest(combined)
    else:
        assert _REGISTRY is not None
        text = generate_latest(_REGISTRY)
    return text + b"".join(generate_latest(registry) for registry in extra)


def process_ended() -> None:
    """A worker stops: its live gauges no longer count (multiprocess mode only)."""
    if MULTIPROCESS:
        mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
