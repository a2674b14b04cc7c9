"""The operator page (issue 11) in a real browser (Debian's chromium through Playwright): the token is
required, an upload in progress shows its progress bar moving (checked on screenshots), a failed PATCH
and a finished upload appear among the recent ones, and an abandoned upload is deleted by its button."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import app_client
from tests.operator_browser import chromium, count_pixels
from tests.servers import ServerProcess
from tusserver import Settings

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}
TOKEN = "operator-secret-123"
BAR_BLUE = (0x2F, 0x7D, 0xE1)  # .bar > div in admin.css
KiB = 1024


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    process = ServerProcess(tmp_path / "data", url, ["--admin-token", TOKEN, "--commit-interval", "0.5"])
    process.start()
    yield process
    process.stop()
    assert "Traceback" not in process.log()


def _create(server: ServerProcess, length: int, name: str) -> str:
    metadata = "filename " + base64.b64encode(name.encode()).decode()
    answer = httpx.post(
        server.url, headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": metadata}
    )
    assert answer.status_code == 201
    return str(answer.headers["Location"])


@pytest.mark.anyio
async def test_no_operator_page_without_a_token(tmp_path: Path) -> None:
    async with app_client(Settings(data_dir=tmp_path / "data")) as http:
        assert (await http.get("/admin")).status_code == 404
        assert (await http.get("/admin/state.json", headers={"Authorization": "Bearer x"})).status_code == 404


def test_token_is_required(server: ServerProcess) -> None:
    root = f"http://127.0.0.1:{server.port}/admin"
    assert httpx.get(root).status_code == 401
    assert 'name="token"' in httpx.get(root).text
    assert httpx.get(root + "/state.json").status_code == 401
    assert httpx.get(root + "/state.json", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(root + "/state.json", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert httpx.post(root + "/login", data={"token": "wrong"}).status_code == 401
    upload = _create(server, 10, "kept.bin")
    assert httpx.delete(root + "/uploads/" + upload.rsplit("/", 1)[1]).status_code == 401
    assert httpx.head(upload, headers=TUS).status_code == 200


def test_operator_page_in_chromium(server: ServerProcess, tmp_path: Path) -> None:
    abandoned = _create(server, 1000, "abandoned.bin")
    assert (
        httpx.patch(abandoned, content=b"a" * 300, headers={**OCTETS, "Upload-Offset": "0"}).status_code
        == 204
    )
    assert httpx.patch(abandoned, content=b"b", headers={**OCTETS, "Upload-Offset": "7"}).status_code == 409
    length = 2048 * KiB
    moving = _create(server, length, "holiday.mov")
    moving_id = moving.rsplit("/", 1)[1]
    done = threading.Event()

    def trickle() -> Iterator[bytes]:
        for _ in range(length // (32 * KiB)):  # about 5 s
            time.sleep(0.08)
            yield b"m" * (32 * KiB)

    def upload() -> None:
        try:
            sent = {**OCTETS, "Upload-Offset": "0"}
            assert httpx.patch(moving, content=trickle(), headers=sent, timeout=60).status_code == 204
        finally:
            done.set()

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"http://127.0.0.1:{server.port}/admin")
        page.fill("#token", TOKEN)
        page.click("button[type=submit]")
        page.wait_for_selector("#status.ok")
        sender = threading.Thread(target=upload)
        sender.start()
        try:
            bar = page.locator(f"#in-progress .bar[data-upload='{moving_id}']")
            bar.wait_for(timeout=15000)
            first_value = float(bar.get_attribute("aria-valuenow") or 0)
            first = count_pixels(bar.screenshot(path=str(tmp_path / "bar-1.png")), BAR_BLUE)
            page.screenshot(path=str(tmp_path / "page-1.png"))
            page.wait_for_function(
                "([selector, before]) => { const bar = document.querySelector(selector);"
                " return bar && Number(bar.getAttribute('aria-valuenow')) >= before + 15; }",
                arg=[f"#in-progress .bar[data-upload='{moving_id}']", first_value],
                timeout=15000,
            )
            second = count_pixels(bar.screenshot(path=str(tmp_path / "bar-2.png")), BAR_BLUE)
            assert second > first + 10, (first, second)  # the bar on screen grew
            row = page.locator(f"#in-progress tr[data-upload='{moving_id}']")
            assert "holiday.mov" in row.inner_text()
            assert "127.0.0.1" in row.inner_text()
            assert "/s" in row.locator(".rate").inner_text()
        finally:
            sender.join(60)
        assert done.is_set()
        page.wait_for_selector(f"#recent tr[data-upload='{moving_id}'] .outcome-finished", timeout=10000)
        failed = page.locator(f"#recent tr[data-upload='{abandoned.rsplit('/', 1)[1]}']")
        assert "conflict" in failed.inner_text()
        assert page.locator(f"#in-progress tr[data-upload='{moving_id}']").count() == 0
        assert "free of" in page.inner_text("#disk")
        assert "0 pending, 0 dead" in page.inner_text("#hooks")
        stale = page.locator(f"#unfinished tr[data-upload='{abandoned.rsplit('/', 1)[1]}']")
        assert "abandoned.bin" in stale.inner_text()
        stale.locator("button.delete").click()
        stale.wait_for(state="detached", timeout=10000)
        page.screenshot(path=str(tmp_path / "page-2.png"))
    assert httpx.head(abandoned, headers=TUS).status_code == 404
