"""Uppy in a real browser: the `--demo` page in Debian's Chromium (Playwright), uploading through nginx.

The page comes from the server itself (`http://127.0.0.1:<server>/demo/`) and uploads to the tus
endpoint behind nginx (`http://127.0.0.1:<nginx>/files/`, `proxy_request_buffering off`,
`client_max_body_size 8m`): another origin, so every request is a CORS request and every
non-simple one is preflighted. Uppy's `chunkSize` is 5 MiB. The files on the server are compared
byte for byte with the ones the browser picked.

Browser tests run on one database backend (SQLite): what they test is the browser and the HTTP path.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser

from tests.balancer import Balancer
from tests.helpers import MiB, random_file, sha256_file
from tests.servers import ServerProcess
from tests.uppy_browser import UppyPage, chromium

CHUNK = 5 * MiB
SUCCESS_GREEN = (0x1B, 0xB2, 0x40)  # Uppy's colour of a finished upload (uppy.min.css: is-complete)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("uppy")
    process = ServerProcess(
        root / "data", f"sqlite:///{root / 'tusserver.db'}", ["--demo", "--max-size", "1G"]
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def nginx(demo_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Balancer]:
    balancer = Balancer(tmp_path_factory.mktemp("nginx"), [demo_server])
    balancer.start()
    yield balancer
    balancer.stop()


def page_url(server: ServerProcess, endpoint: str, **params: str) -> str:
    query = httpx.QueryParams({"endpoint": endpoint, "chunkSize": str(CHUNK), **params})
    return f"http://127.0.0.1:{server.port}/demo/?{query}"


@pytest.fixture
def uppy(browser: Browser, demo_server: ServerProcess, nginx: Balancer) -> Iterator[UppyPage]:
    page = UppyPage(browser, page_url(demo_server, nginx.url))
    yield page
    page.close()


def stored(server: ServerProcess, url: str) -> Path:
    return server.data_dir / "uploads" / url.rstrip("/").rsplit("/", 1)[1]


def assert_identical(server: ServerProcess, files: list[dict[str, Any]], sources: list[Path]) -> None:
    by_name = {file["name"]: file for file in files}
    assert sorted(by_name) == sorted(source.name for source in sources)
    for source in sources:
        url = by_name[source.name]["url"]
        assert url is not None, by_name[source.name]
        assert sha256_file(stored(server, url)) == sha256_file(source), source.name


def patches_at(page: UppyPage, url: str) -> list[int]:
    """`Upload-Offset` of each PATCH the browser sent to `url`, in order."""
    return [
        int(headers["upload-offset"])
        for method, sent, headers in page.requests
        if method == "PATCH" and sent == url
    ]


# (a) three files through nginx, from another origin


def test_three_files_through_nginx_from_another_origin_arrive_byte_identical(
    uppy: UppyPage, demo_server: ServerProcess, nginx: Balancer, tmp_path: Path
) -> None:
    sources = [random_file(tmp_path / f"file-{size}.bin", size * MiB) for size in (1, 5, 12)]
    uppy.add_files(sources)
    uppy.start_upload()
    uppy.wait_until_complete()
    files = uppy.files()
    assert all(file["url"].startswith(nginx.url) for file in files)
    assert_identical(demo_server, files, sources)
    big = next(file["url"] for file in files if file["size"] == 12 * MiB)
    assert patches_at(uppy, big) == [0, CHUNK, 2 * CHUNK]  # 5 MiB chunks, under nginx's 8m
    origin = f"http://127.0.0.1:{demo_server.port}"
    preflights = [r for r in uppy.requests if r[0] == "OPTIONS"]
    assert not preflights or all(r[1].startswith(nginx.url) for r in preflights)
    assert uppy.page.evaluate("location.origin") == origin != nginx.url.rsplit("/files/", 1)[0]


# (b) offline for 3 s in the middle of an upload


def test_upload_survives_three_seconds_offline_and_resumes(
    uppy: UppyPage, demo_server: ServerProcess, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "offline.bin", 12 * MiB)
    uppy.network(upload_bytes_per_second=4 * MiB)  # slow enough to be caught mid-upload
    uppy.add_files([source])
    uppy.start_upload()
    uppy.wait_for_progress(CHUNK + MiB)  # inside the second PATCH
    uppy.network(offline=True)
    time.sleep(3)  # the outage itself (what the issue asks for), not a wait for something
    uppy.network()
    uppy.wait_until_complete()
    files = uppy.files()
    assert_identical(demo_server, files, [source])
    offsets = patches_at(uppy, files[0]["url"])
    assert offsets[:2] == [0, CHUNK]
    assert len(offsets) > 3, offsets  # a PATCH was cut and sent again ...
    assert len({(m, u) for m, u, _ in uppy.requests if m == "POST"}) == 1  # ... to the same upload
    assert any(m == "HEAD" for m, _, _ in uppy.requests)  # resumed from the server's offset


# (c) a page reload in the middle of an upload resumes from the stored URL


def test_page_reload_mid_upload_resumes_from_the_stored_url_not_from_zero(
    uppy: UppyPage, demo_server: ServerProcess, tmp_path: Path
) -> None:
    source = random_file(tmp_path / "reload.bin", 12 * MiB)
    uppy.network(upload_bytes_per_second=4 * MiB)
    uppy.add_files([source])
    uppy.start_upload()
    uppy.wait_for_progress(CHUNK + MiB)  # the first 5 MiB chunk is committed on the server
    before = uppy.files()[0]["url"]
    assert before is not None
    uppy.reload()
    sent_before = len(uppy.requests)
    uppy.network()
    uppy.add_files([source])  # the same file again: Uppy's fingerprint finds the stored upload URL
    uppy.start_upload()
    uppy.wait_until_complete()
    after = uppy.files()[0]["url"]
    assert after == before
    resumed = [h for m, u, h in uppy.requests[sent_before:] if m == "PATCH" and u == after]
    assert resumed, uppy.requests[sent_before:]
    assert int(resumed[0]["upload-offset"]) >= CHUNK  # not from zero
    assert not any(m == "POST" for m, _, _ in uppy.requests[sent_before:])
    assert sha256_file(stored(demo_server, after)) == sha256_file(source)


# (d) the finished Dashboard, as a screenshot


def test_screenshot_of_the_finished_dashboard_shows_completion(uppy: UppyPage, tmp_path: Path) -> None:
    """The finished Dashboard, as pixels: the file's green check mark (absent before the upload) and
    the status bar's full-width green progress line."""
    uppy.add_files([random_file(tmp_path / "small.bin", 300 * 1024)])
    tile_before = uppy.colour_pixels(".uppy-Dashboard-Item", SUCCESS_GREEN)
    uppy.start_upload()
    uppy.wait_until_complete()
    uppy.page.mouse.move(0, 0)  # no hover effect on the buttons
    uppy.page.screenshot(path=str(tmp_path / "dashboard.png"))  # kept with the test's files
    tile_after = uppy.colour_pixels(".uppy-Dashboard-Item", SUCCESS_GREEN)
    assert tile_after > tile_before + 100, (tile_before, tile_after)
    bar_width = uppy.page.locator(".uppy-StatusBar").bounding_box()["width"]  # type: ignore[index]
    assert uppy.colour_pixels(".uppy-StatusBar", SUCCESS_GREEN) >= 1.8 * bar_width  # 2 px, end to end
    assert uppy.page.locator(".uppy-StatusBar").inner_text().strip().startswith("Complete")
    assert uppy.page.locator("#uploaded a").count() == 1


# CORS, as the browser sees it


def test_cors_in_the_browser_preflights_custom_headers_and_exposes_every_tus_header(
    uppy: UppyPage, nginx: Balancer
) -> None:
    """A page on another origin sends tus and IETF requests with `fetch` (preflighted: custom header,
    PATCH, DELETE) and can read every response header a client needs."""
    options_before = nginx.upstream_log().count("OPTIONS 200")
    result: dict[str, Any] = uppy.page.evaluate(
        """async (endpoint) => {
            const read = (response, names) => Object.fromEntries(names.map(n => [n, response.headers.get(n)]))
            const tus = { 'Tus-Resumable': '1.0.0', 'X-Demo-Token': 'secret' }
            const options = await fetch(endpoint, { method: 'OPTIONS', headers: tus })
            const created = await fetch(endpoint, { method: 'POST', headers: { ...tus,
                'Upload-Length': '5', 'Upload-Metadata': 'filename YS50eHQ=' } })
            const url = created.headers.get('Location')
            const patched = await fetch(url, { method: 'PATCH', body: 'hello', headers: { ...tus,
                'Upload-Offset': '0', 'Content-Type': 'application/offset+octet-stream' } })
            const head = await fetch(url, { method: 'HEAD', headers: tus })
            const got = await fetch(url, { headers: { Range: 'bytes=1-2' } })
            const deferred = await fetch(endpoint, { method: 'POST', headers: { ...tus,
                'Upload-Defer-Length': '1', 'Upload-Concat': 'partial' } })
            const deferredUrl = deferred.headers.get('Location')
            const deferredHead = await fetch(deferredUrl, { method: 'HEAD', headers: tus })
            const ietf = { 'Upload-Draft-Interop-Version': '8' }
            const draft = await fetch(endpoint, {
                method: 'POST', headers: { ...ietf, 'Upload-Complete': '?0' } })
            const draftUrl = draft.headers.get('Location')
            const draftHead = await fetch(draftUrl, { method: 'HEAD', headers: ietf })
            const deleted = await fetch(draftUrl, { method: 'DELETE', headers: ietf })
            const pair = (response, names) => [response.status, read(response, names)]
            return {
                options: pair(options,
                    ['Tus-Version', 'Tus-Extension', 'Tus-Checksum-Algorithm', 'Tus-Max-Size']),
                created: pair(created, ['Location', 'Upload-Offset', 'Upload-Expires', 'Tus-Resumable']),
                patched: pair(patched, ['Upload-Offset']),
                head: pair(head, ['Upload-Offset', 'Upload-Length', 'Upload-Metadata', 'Cache-Control']),
                got: pair(got,
                    ['Content-Range', 'Content-Disposition', 'Accept-Ranges', 'ETag', 'Last-Modified']),
                deferred: pair(deferredHead, ['Upload-Defer-Length', 'Upload-Concat']),
                draft: pair(draft, ['Upload-Complete', 'Upload-Limit', 'Upload-Draft-Interop-Version']),
                draftHead: pair(draftHead, ['Upload-Offset', 'Upload-Complete', 'Upload-Limit']),
                deleted: deleted.status,
            }
        }""",
        nginx.url,
    )
    status, headers = result["options"]
    assert status == 200
    assert headers["Tus-Version"] == "1.0.0"
    assert "creation" in headers["Tus-Extension"]
    assert headers["Tus-Checksum-Algorithm"]
    assert headers["Tus-Max-Size"] == str(1024**3)
    status, headers = result["created"]
    assert status == 201
    assert headers["Location"].startswith(nginx.url)
    assert headers["Upload-Offset"] == "0"
    assert headers["Upload-Expires"]
    assert headers["Tus-Resumable"] == "1.0.0"
    assert result["patched"] == [204, {"Upload-Offset": "5"}]
    assert result["head"] == [
        200,
        {
            "Upload-Offset": "5",
            "Upload-Length": "5",
            "Upload-Metadata": "filename YS50eHQ=",
            "Cache-Control": "no-store",
        },
    ]
    status, headers = result["got"]
    assert status == 206
    assert headers["Content-Range"] == "bytes 1-2/5"
    assert "a.txt" in headers["Content-Disposition"]
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["ETag"]
    assert headers["Last-Modified"]
    assert result["deferred"] == [200, {"Upload-Defer-Length": "1", "Upload-Concat": "partial"}]
    status, headers = result["draft"]
    assert status == 201
    assert headers["Upload-Complete"] == "?0"
    assert "min-size=0" in headers["Upload-Limit"]
    assert headers["Upload-Draft-Interop-Version"] == "8"
    status, headers = result["draftHead"]
    assert status == 204
    assert (headers["Upload-Offset"], headers["Upload-Complete"]) == ("0", "?0")
    assert headers["Upload-Limit"]
    assert result["deleted"] == 204
    # The browser preflighted (its own OPTIONS, not shown to the page): nginx passed them on.
    assert nginx.upstream_log().count("OPTIONS 200") - options_before >= 3


def test_uppy_speaks_the_ietf_draft_from_the_browser(
    browser: Browser, demo_server: ServerProcess, nginx: Balancer, tmp_path: Path
) -> None:
    """The demo page with `?protocol=ietf-draft-05` (interop 6): Uppy's Tus plugin creates and
    appends with the draft's fields, cross-origin through nginx."""
    page = UppyPage(browser, page_url(demo_server, nginx.url, protocol="ietf-draft-05"))
    try:
        source = random_file(tmp_path / "draft.bin", 7 * MiB)
        page.add_files([source])
        page.start_upload()
        page.wait_until_complete()
        files = page.files()
        assert_identical(demo_server, files, [source])
        sent = [headers for method, _, headers in page.requests if method == "PATCH"]
        assert {h["upload-draft-interop-version"] for h in sent} == {"6"}
        assert [h["upload-complete"] for h in sent] == ["?0", "?1"]
    finally:
        page.close()
