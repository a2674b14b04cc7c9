"""The measuring tools of `bench/` that the README quotes: `floor_server.py` (the server with POST and
HEAD answering constants) must answer as a tus server would (a benchmark client follows its
`Location`s) and store nothing; `inprocess.py` must drive the app through whole cycles, with each
layer it can leave out."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest

from tests.servers import REPO_ROOT, free_port, wait_for_port

TUS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture
def floor_url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    command = [
        sys.executable, str(REPO_ROOT / "bench" / "floor_server.py"), "serve",
        "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path / "data"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env)
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}/files/"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0


def test_post_and_head_answer_constants_and_store_nothing(floor_url: str, tmp_path: Path) -> None:
    with httpx.Client() as client:
        locations = []
        for _ in range(3):
            created = client.post(floor_url, headers={**TUS, "Upload-Length": "1024"})
            assert created.status_code == 201
            location = urljoin(floor_url, created.headers["Location"])
            locations.append(location)
            status = client.head(location, headers=TUS)
            assert status.status_code == 200
            assert status.headers["Upload-Offset"] == "0"
            assert status.headers["Upload-Length"] == "1024"
            assert status.headers["Tus-Resumable"] == "1.0.0"  # the server's own steps still run
        assert len(set(locations)) == 3
        assert client.options(floor_url).headers["Tus-Version"] == "1.0.0"  # not replaced
    uploads = tmp_path / "data" / "uploads"
    assert not uploads.exists() or not any(uploads.iterdir())
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "tusserver.db")) as database:
        assert database.execute("SELECT count(*) FROM upload").fetchone() == (0,)  # no row either


@pytest.mark.parametrize("without", [None, "records", "handlers"])
def test_inprocess_cycles_run_with_each_layer(without: str | None) -> None:
    command = [sys.executable, str(REPO_ROOT / "bench" / "inprocess.py"), "--cycles", "64", "--warm", "16"]
    if without:
        command += ["--without", without]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    finished = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert "64 cycles: " in finished.stderr  # a failed POST or HEAD raises instead
