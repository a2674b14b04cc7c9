"""The `--demo` page without a browser: off by default, and its Uppy assets are the pinned release."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from tests.helpers import sha256_file
from tests.test_tus_js_client import node
from tusserver import Settings, create_app

__all__ = ["node"]  # the fixture that makes sure Node.js and npm are there

WEB = Path(__file__).resolve().parent / "js" / "uppy-assets"
STATIC = Path(__file__).resolve().parent.parent / "tusserver" / "demo" / "static"


@pytest.mark.anyio
async def test_the_demo_page_is_off_by_default(tmp_path: Path) -> None:
    for demo, expected in ((False, 404), (True, 200)):
        app = create_app(Settings(data_dir=tmp_path / "data", demo=demo))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as client:
            for path in ("/demo/", "/demo/uppy.min.mjs", "/demo/uppy.min.css"):
                assert (await client.get(path)).status_code == expected, (demo, path)


def test_shipped_uppy_assets_are_the_pinned_npm_release(node: str) -> None:
    """tusserver/demo/static holds exactly the dist files of the `uppy` version that
    tests/js/uppy-assets/package-lock.json pins (refresh: `npm ci && npm run copy` there)."""
    if not (WEB / "node_modules" / "uppy").is_dir():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=WEB, check=True, capture_output=True, timeout=240
        )
    dist = WEB / "node_modules" / "uppy" / "dist"
    for name in ("uppy.min.mjs", "uppy.min.css"):
        assert sha256_file(STATIC / name) == sha256_file(dist / name), name
    assert sorted(path.name for path in STATIC.iterdir()) == ["uppy.min.css", "uppy.min.mjs"]
