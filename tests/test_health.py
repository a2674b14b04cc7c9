"""`/health/live` and `/health/ready` (issue 11): no `Tus-Resumable` needed, JSON naming what failed,
readiness 503 while the instance's PostgreSQL is stopped and 200 again after, and while the free space
is below the `--min-free-space` reserve; configurable paths."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import httpx
import pytest

from tests.conftest import app_client
from tests.pgcluster import PostgresCluster
from tests.scrape import scrape, value
from tests.servers import ServerProcess
from tusserver import Settings

TUS = {"Tus-Resumable": "1.0.0"}


def _ready_until(root: str, status: int, timeout: float = 30.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(root + "/health/ready", timeout=10)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


@pytest.mark.postgresql
def test_readiness_follows_postgresql_down_and_up(cluster: PostgresCluster, tmp_path: Path) -> None:
    server = ServerProcess(data_dir=tmp_path / "data", database_url=cluster.url)
    server.start()
    root = f"http://127.0.0.1:{server.port}"
    try:
        ready = httpx.get(root + "/health/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ready"
        assert ready.json()["failed"] == []
        cluster.stop()
        down = _ready_until(root, 503)
        assert down.status_code == 503, down.text
        assert down.headers["Retry-After"].isdigit()
        assert down.json()["failed"] == ["database"]
        assert down.json()["checks"]["storage"]["ok"] is True
        assert httpx.get(root + "/health/live").status_code == 200  # not a reason to restart the process
        metrics = scrape(root)
        assert value(metrics, "tusserver_ready") == 0
        assert value(metrics, "tusserver_ready_check", check="database") == 0
        assert value(metrics, "tusserver_database_up") == 0
        cluster.start()
        back = _ready_until(root, 200)
        assert back.status_code == 200, back.text
        assert httpx.post(server.url, headers={**TUS, "Upload-Length": "3"}).status_code == 201
    finally:
        server.stop()
    assert "Traceback" not in server.log()


def test_readiness_fails_below_the_free_space_reserve(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    server = ServerProcess(tmp_path / "data", url, ["--min-free-space", "100%", "--health-path", "/probe/"])
    server.start()
    root = f"http://127.0.0.1:{server.port}"
    try:
        response = httpx.get(root + "/probe/ready")
        assert response.status_code == 503
        assert response.json()["failed"] == ["free_space"]
        assert response.json()["checks"]["free_space"]["free_bytes_above_reserve"] <= 0
        assert httpx.get(root + "/probe/live").status_code == 200
        assert httpx.get(root + "/health/live").status_code == 404
    finally:
        server.stop()


@pytest.mark.anyio
async def test_probes_need_no_tus_header_and_fail_on_an_unwritable_directory(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    async with app_client(settings) as http:
        bare = {"Tus-Resumable": ""}
        live = await http.get("/health/live", headers=bare)
        assert live.status_code == 200
        assert live.json() == {"status": "live"}
        assert "Tus-Resumable" not in live.headers
        ready = await http.get("/health/ready", headers=bare)
        assert ready.status_code == 200, ready.text
        assert set(ready.json()["checks"]) == {"database", "storage", "free_space"}
        blocker = settings.uploads_dir / f".ready-{os.getpid()}"  # the probe's file cannot be written
        blocker.mkdir()  # (file modes would not stop root)
        try:
            deadline = time.monotonic() + 10
            while (failing := await http.get("/health/ready", headers=bare)).status_code == 200:
                assert time.monotonic() < deadline, "readiness still 200"
                await anyio.sleep(0.1)  # the checks' answer is cached for a second
        finally:
            blocker.rmdir()
        assert failing.status_code == 503
        assert failing.json()["failed"] == ["storage"]
        assert "IsADirectoryError" in failing.json()["checks"]["storage"]["error"]
