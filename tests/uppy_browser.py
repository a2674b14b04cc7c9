"""Debian's Chromium driven by Playwright, for the Uppy demo page tests (tests/test_uppy_browser.py).

No browser is downloaded: Playwright launches `/usr/bin/chromium` (Debian's `chromium` package; CI's
`.ci/run` installs it). `UppyPage` wraps one page of `tusserver serve --demo` and the few things the
tests do with it: add files, start the upload, read Uppy's state, throttle or cut the network (Chrome
DevTools Protocol), and count pixels of a colour in a screenshot (decoded by the browser itself).
"""

from __future__ import annotations

import base64
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = "/usr/bin/chromium"


def chromium_path() -> str:
    found = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if found is None:
        raise RuntimeError("the browser tests need Debian's chromium (apt-get install chromium)")
    return found


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium (no sandbox: CI runs as root)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


class UppyPage:
    """The demo page in a fresh browser context (its own storage, so no resume from other tests)."""

    def __init__(self, browser: Browser, url: str) -> None:
        self.context = browser.new_context(viewport={"width": 1000, "height": 720})
        self.page: Page = self.context.new_page()
        self.cdp = self.context.new_cdp_session(self.page)
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        """(method, url, headers) of every request the page sent."""
        self.page.on("request", lambda r: self.requests.append((r.method, r.url, r.headers)))
        self.url = url
        self.open()

    def open(self) -> None:
        self.page.goto(self.url)
        self.page.wait_for_function("window.uppy !== undefined")

    def reload(self) -> None:
        self.page.reload()
        self.page.wait_for_function("window.uppy !== undefined")

    def close(self) -> None:
        self.context.close()

    def add_files(self, paths: Sequence[Path]) -> None:
        self.page.set_input_files("input.uppy-Dashboard-input >> nth=0", [str(p) for p in paths])

    def start_upload(self) -> None:
        self.page.click(".uppy-StatusBar-actionBtn--upload")

    def wait_until_complete(self, timeout: float = 60.0) -> None:
        self.page.wait_for_selector(".uppy-StatusBar.is-complete", timeout=timeout * 1000)

    def files(self) -> list[dict[str, Any]]:
        """name, size, bytes uploaded and upload URL of each file in Uppy's state."""
        result: list[dict[str, Any]] = self.page.evaluate(
            """Object.values(uppy.getState().files).map(f => ({
                name: f.name, size: f.size, uploaded: f.progress.bytesUploaded || 0,
                complete: Boolean(f.progress.uploadComplete),
                url: (f.response && f.response.uploadURL) || (f.tus && f.tus.uploadUrl) || null}))"""
        )
        return result

    def wait_for_progress(self, at_least: int, timeout: float = 30.0) -> None:
        """Poll Uppy's state until one file reports `at_least` bytes sent."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(file["uploaded"] >= at_least for file in self.files()):
                return
            time.sleep(0.02)
        raise TimeoutError(f"no file reached {at_least} bytes in {timeout} s: {self.files()}")

    def network(self, offline: bool = False, upload_bytes_per_second: int = -1) -> None:
        """Emulated network conditions (-1: no throttling)."""
        conditions = {
            "offline": offline,
            "latency": 0,
            "downloadThroughput": -1,
            "uploadThroughput": upload_bytes_per_second,
        }
        self.cdp.send("Network.emulateNetworkConditions", conditions)

    def colour_pixels(self, selector: str, rgb: tuple[int, int, int], tolerance: int = 12) -> int:
        """Pixels of about `rgb` in a screenshot of `selector` (PNG decoded by the browser)."""
        png = self.page.locator(selector).screenshot()
        count: int = self.page.evaluate(
            """async ([data, rgb, tolerance]) => {
                const image = new Image()
                image.src = 'data:image/png;base64,' + data
                await image.decode()
                const canvas = document.createElement('canvas')
                canvas.width = image.width
                canvas.height = image.height
                const context = canvas.getContext('2d')
                context.drawImage(image, 0, 0)
                const pixels = context.getImageData(0, 0, image.width, image.height).data
                let count = 0
                for (let i = 0; i < pixels.length; i += 4) {
                    const near = [0, 1, 2].every(c => Math.abs(pixels[i + c] - rgb[c]) <= tolerance)
                    if (near) count++
                }
                return count
            }""",
            [base64.b64encode(png).decode(), list(rgb), tolerance],
        )
        return count
