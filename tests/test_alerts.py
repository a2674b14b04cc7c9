"""docker/prometheus/alerts.yml and the Grafana dashboard (issue 11): promtool checks the rules and
runs their unit tests (tests/prometheus/alerts_test.yml), and every metric an alert or a panel names
is one a real server exposes on /metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import REPO_ROOT, ServerProcess

ALERTS = REPO_ROOT / "docker" / "prometheus" / "alerts.yml"
DASHBOARD = REPO_ROOT / "docker" / "grafana" / "tusserver-dashboard.json"
_NAME = re.compile(r"\btusserver_[a-z0-9_]+")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not installed (Debian package prometheus; .ci/run installs it)")
    return found


def test_promtool_checks_the_rules() -> None:
    checked = subprocess.run([_promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 5 rules found" in checked.stdout


def test_the_alerts_fire_on_their_series_and_only_then() -> None:
    tested = subprocess.run(
        [_promtool(), "test", "rules", "alerts_test.yml"],
        cwd=REPO_ROOT / "tests" / "prometheus", capture_output=True, text=True,
    )  # fmt: skip
    assert tested.returncode == 0, tested.stdout + tested.stderr


def _exposed_names(tmp_path: Path) -> set[str]:
    """Every sample name a real server can expose, from the families its /metrics declares."""
    server = ServerProcess(tmp_path / "data", f"sqlite:///{tmp_path / 'db.sqlite'}")
    server.start()
    try:
        text = httpx.get(f"http://127.0.0.1:{server.port}/metrics").text
    finally:
        server.stop()
    exposed = set()
    for family in text_string_to_metric_families(text):
        exposed |= {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
    return exposed


def test_rules_and_panels_name_only_exposed_metrics(tmp_path: Path) -> None:
    rules = yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
    alert_names = {rule["alert"] for rule in rules}
    assert alert_names >= {"TusserverDiskSpaceLow", "TusserverUploadSuccessRateLow",
                           "TusserverUploadsSlow", "TusserverNotReady"}  # fmt: skip
    dashboard = json.loads(DASHBOARD.read_text())
    titles = {panel["title"] for panel in dashboard["panels"]}
    for wanted in ("Uploads/s", "MB/s", "Success rate", "by file size", "Disk", "Abandoned"):
        assert any(wanted in title for title in titles), wanted
    expressions = [rule["expr"] for rule in rules] + [
        target["expr"] for panel in dashboard["panels"] for target in panel["targets"]
    ]
    used = {name for expression in expressions for name in _NAME.findall(expression)}
    assert len(used) > 15
    assert used - _exposed_names(tmp_path) == set()
