"""A second real client: tus-js-client (the reference JavaScript client) in Node against a real server.

tests/js/upload.mjs uploads a file from disk; the test then reads it back with a plain GET and
compares SHA-256 digests. Once in 5 MiB chunks (creation + PATCH + HEAD) and once with
`parallelUploads: 4`, which tus-js-client implements with the concatenation extension: four
`Upload-Concat: partial` uploads, then a POST with `Upload-Concat: final;<url> <url> ...`.

The npm dependencies (tus-js-client, pinned in tests/js/package-lock.json) are installed on first use.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.helpers import MiB, random_file, sha256_file, stored_file
from tests.servers import ServerProcess

JS_DIR = Path(__file__).resolve().parent / "js"
TUS_HEADERS = {"Tus-Resumable": "1.0.0"}


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with tests/js/node_modules installed (`npm ci`) if it is not yet."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("these tests need Node.js >= 18 and npm on PATH (Debian: apt-get install nodejs npm)")
    if not (JS_DIR / "node_modules" / "tus-js-client").is_dir():
        install = "ci" if (JS_DIR / "package-lock.json").exists() else "install"
        command = [npm, install, "--no-audit", "--no-fund"]
        shown = f"`{' '.join(command)}` in {JS_DIR}"
        try:
            completed = subprocess.run(command, cwd=JS_DIR, capture_output=True, text=True, timeout=240)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{shown} did not finish in 240 s (is the npm registry reachable?)")
        if completed.returncode != 0:
            pytest.fail(
                f"{shown} failed with status {completed.returncode}:\n{completed.stdout}\n{completed.stderr}"
            )
    return node


def upload_with_tus_js_client(
    node: str, endpoint: str, source: Path, chunk_size: int, parallel: int, protocol: str = "tus-v1"
) -> str:
    """Runs tests/js/upload.mjs (`protocol`: tus-v1, ietf-draft-03, ietf-draft-05); the URL of the
    (final) upload it created."""
    command = [node, "upload.mjs", endpoint, str(source), str(chunk_size), str(parallel), protocol]
    completed = subprocess.run(command, cwd=JS_DIR, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, f"tus-js-client failed ({completed.returncode}):\n{completed.stderr}"
    url: str = json.loads(completed.stdout)["url"]
    return url


def head(url: str) -> httpx.Response:
    response = httpx.head(url, headers=TUS_HEADERS)
    assert response.status_code == 200, f"HEAD {url}: {response.status_code}"
    return response


def sha256_of_download(url: str) -> str:
    """GET the upload (as a browser would: no tus headers), hashing the body as it streams in."""
    digest = hashlib.sha256()
    with httpx.stream("GET", url, timeout=60) as response:
        assert response.status_code == 200, f"GET {url}: {response.status_code} {response.read()[:500]!r}"
        for block in response.iter_bytes(MiB):
            digest.update(block)
    return digest.hexdigest()


def test_tus_js_client_uploads_30_mib_in_5_mib_chunks_and_get_returns_the_same_bytes(
    server: ServerProcess, node: str, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "video.bin", 30 * MiB)
    url = upload_with_tus_js_client(node, server.url, source, chunk_size=5 * MiB, parallel=1)
    assert url.startswith(server.url)
    response = head(url)
    assert response.headers["Upload-Offset"] == response.headers["Upload-Length"] == str(30 * MiB)
    assert sha256_file(stored_file(server.data_dir, url)) == sha256_file(source)
    assert sha256_of_download(url) == sha256_file(source)


def test_tus_js_client_parallel_uploads_are_concatenated_into_a_final_upload(
    server: ServerProcess, node: str, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "video.bin", 30 * MiB)
    url = upload_with_tus_js_client(node, server.url, source, chunk_size=5 * MiB, parallel=4)
    assert url.startswith(server.url)
    response = head(url)
    concat = response.headers.get("Upload-Concat", "")
    assert concat.startswith("final;"), f"HEAD {url}: Upload-Concat {concat!r}"
    assert len(concat.removeprefix("final;").split()) == 4
    assert response.headers["Upload-Length"] == str(30 * MiB)
    assert sha256_of_download(url) == sha256_file(source)
