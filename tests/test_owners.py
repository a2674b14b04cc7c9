"""Upload owners (issue 9, point 8): the README's complete bearer-token example, run as written.

The module is cut out of README.md and loaded by a real server process with `--hooks-python`, so the
example a user copies is the one that is tested: uploads belong to the user who created them, anyone
else gets 404, a request without a valid token gets 401, and a browser may send `Authorization`."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tusclient import client as tus

from tests.servers import REPO_ROOT, ServerProcess

TUS = {"Tus-Resumable": "1.0.0"}
ALICE = {"Authorization": "Bearer s3cret-a"}
BOB = {"Authorization": "Bearer s3cret-b"}
OCTET_STREAM = "application/offset+octet-stream"


def readme_example() -> str:
    """The Python block of README.md that starts with `# owner_hooks.py`."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"```python\n(# owner_hooks\.py.*?)```", readme, re.DOTALL)
    assert match, "README.md lost its owner_hooks.py example"
    return match.group(1)


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[ServerProcess]:
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "owner_hooks.py").write_text(readme_example(), encoding="utf-8")
    env = {
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(modules)]),
        "TUSSERVER_TOKENS": "s3cret-a=alice,s3cret-b=bob",
    }
    process = ServerProcess(
        tmp_path / "data", database_url, extra_args=["--hooks-python", "owner_hooks:hooks"], env=env
    )
    process.start()
    yield process
    process.stop()


def test_uploads_are_visible_only_to_their_owner(server: ServerProcess) -> None:
    data = os.urandom(300_000)
    with io.BytesIO(data) as stream:
        uploader = tus.TusClient(server.url, headers=ALICE).uploader(
            file_stream=stream, chunk_size=100_000, metadata={"filename": "photo.jpg"}
        )
        uploader.upload()
    url = str(uploader.url)

    for method in ("HEAD", "GET", "DELETE"):
        other = httpx.request(method, url, headers={**TUS, **BOB})
        assert other.status_code == 404, method
    other_patch = httpx.patch(
        url,
        content=b"x",
        headers={
            **TUS,
            **BOB,
            "Upload-Offset": str(len(data)),
            "Content-Type": "application/offset+octet-stream",
        },
    )
    assert (other_patch.status_code, other_patch.text.strip()) == (404, "upload not found")

    anonymous = httpx.post(server.url, headers={**TUS, "Upload-Length": "1"})
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert httpx.head(url, headers=TUS).status_code == 401
    forged = httpx.head(url, headers={**TUS, "Authorization": "Bearer guess"})
    assert forged.status_code == 401

    mine = httpx.head(url, headers={**TUS, **ALICE})
    assert (mine.status_code, mine.headers["Upload-Offset"]) == (200, str(len(data)))
    assert httpx.get(url, headers=ALICE).content == data
    assert httpx.delete(url, headers={**TUS, **ALICE}).status_code == 204

    bobs = httpx.post(server.url, headers={**TUS, **BOB, "Upload-Length": "0"})
    assert bobs.status_code == 201
    assert httpx.head(bobs.headers["Location"], headers={**TUS, **ALICE}).status_code == 404


def test_a_browser_may_send_the_token(server: ServerProcess) -> None:
    preflight = httpx.options(
        server.url,
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,tus-resumable,upload-length,upload-metadata",
        },
    )
    assert preflight.status_code == 200
    allowed = {name.strip().lower() for name in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "tus-resumable", "upload-length", "upload-metadata"} <= allowed
    created = httpx.post(
        server.url, headers={**TUS, **ALICE, "Origin": "https://app.example", "Upload-Length": "0"}
    )
    assert created.status_code == 201
    assert "Location" in created.headers["Access-Control-Expose-Headers"]
