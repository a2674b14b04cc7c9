"""The request series counted in plain Python (`metrics.RequestTally`) expose exactly what
prometheus-client's own counter and histograms would for the same answers, so a dashboard cannot
tell which one counted."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from tusserver import metrics

_ANSWERS = [
    ("POST", "201", 0.004), ("HEAD", "200", 0.005), ("HEAD", "200", 0.0051), ("POST", "201", 3.0),
    ("PATCH", "204", 0.2), ("PATCH", "409", 4000.0), ("GET", "404", 11.0), ("POST", "507", 0.0),
    ("OTHER", "none", 0.1), ("PATCH", "204", 60.0),
]  # fmt: skip
"""Values on bucket bounds, between them, below the first and past the last."""


def _by_prometheus_client(answers: list[tuple[str, str, float]]) -> bytes:
    registry = CollectorRegistry()
    requests = Counter("tusserver_http_requests", "x", ["method", "status"], registry=registry)
    timed = Histogram(
        "tusserver_http_request_duration_seconds", "x", ["method"], buckets=metrics._FAST, registry=registry
    )
    patches = Histogram("tusserver_patch_duration_seconds", "x", buckets=metrics._LONG, registry=registry)
    for method, status, seconds in answers:
        requests.labels(method, status).inc()
        if method == "PATCH":
            patches.observe(seconds)
        else:
            timed.labels(method).observe(seconds)
    return _without_help(generate_latest(registry))


def _by_tally(answers: list[tuple[str, str, float]]) -> bytes:
    registry = CollectorRegistry()
    tally = metrics.RequestTally()
    registry.register(tally)
    for answer in answers:
        tally.count(*answer)
    return _without_help(generate_latest(registry))


def _without_help(text: bytes) -> bytes:
    return b"\n".join(line for line in text.splitlines() if not line.startswith(b"# HELP"))


def test_the_tally_exposes_what_prometheus_client_would() -> None:
    assert _by_tally(_ANSWERS) == _by_prometheus_client(_ANSWERS)
    assert b'tusserver_http_request_duration_seconds_bucket{le="0.005",method="HEAD"} 1.0' in _by_tally(
        _ANSWERS
    )


def test_before_any_answer_the_patch_histogram_is_there_with_zeros() -> None:
    assert _by_tally([]) == _by_prometheus_client([])
