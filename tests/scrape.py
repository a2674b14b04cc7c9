"""Reading `/metrics` in tests: one scrape as {(sample name, sorted labels): value}, and polling until
a condition on the values holds."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(base: str, path: str = "/metrics") -> Samples:
    response = httpx.get(base.rstrip("/") + path, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 if it was never set (a labelled counter appears on first use)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def poll(
    base: str, condition: Callable[[Samples], bool], timeout: float = 20.0, what: str = "condition"
) -> Samples:
    """Scrape until `condition` holds (the database-derived gauges refresh every few seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(base)
        if condition(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.2)
