"""`/metrics` scraped from a real server while real uploads run (issue 11): counts, bytes received vs
committed, durations, PATCH failures by cause, abandoned uploads after expiry, workers adding up."""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import app_client
from tests.helpers import MiB, raw_patch_head
from tests.hook_receiver import HookReceiver
from tests.scrape import Samples, names, poll, scrape, value
from tests.servers import ServerProcess
from tusserver import Settings
from tusserver.errors import StorageFull, StorageUnavailable, UploadDataLost, UploadGone
from tusserver.metrics import failure_cause

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}


def _root(server: ServerProcess) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
def start(tmp_path: Path, database_url: str) -> Iterator[Callable[..., ServerProcess]]:
    """Starts a server with extra flags; stops it after the test."""
    servers: list[ServerProcess] = []

    def started(*args: str) -> ServerProcess:
        server = ServerProcess(tmp_path / "data", database_url, ["--commit-interval", "0.2", *args])
        servers.append(server)
        server.start()
        return server

    yield started
    for server in servers:
        server.stop()
        assert "Traceback" not in server.log()


@pytest.fixture
def receiver() -> Iterator[HookReceiver]:
    receiver = HookReceiver()
    yield receiver
    receiver.close()


def _delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def test_a_real_upload_moves_counts_bytes_and_durations(start: Callable[..., ServerProcess]) -> None:
    started = start()
    root, length = _root(started), 3 * MiB
    before = scrape(root)
    location = httpx.post(started.url, headers={**TUS, "Upload-Length": str(length)}).headers["Location"]
    halfway = threading.Event()
    answer: list[httpx.Response] = []

    def body() -> Iterator[bytes]:
        for index in range(48):
            if index == 24:
                assert halfway.wait(30)
            yield bytes([index]) * (64 * 1024)

    def send() -> None:
        answer.append(
            httpx.patch(location, content=body(), headers={**OCTETS, "Upload-Offset": "0"}, timeout=60)
        )

    sender = threading.Thread(target=send)
    sender.start()
    try:
        during = poll(
            root,
            lambda s: (
                value(s, "tusserver_uploads_in_progress") == 1
                and _delta(s, before, "tusserver_received_bytes_total") >= length // 2
            ),
            what="a body in progress with half its bytes counted (at a checkpoint)",
        )
        assert _delta(during, before, "tusserver_uploads_finished_total") == 0
        time.sleep(1.0)  # the upload takes a while: its duration must show it
    finally:
        halfway.set()
        sender.join(60)
    assert answer[0].status_code == 204
    after = scrape(root)
    assert _delta(after, before, "tusserver_uploads_created_total") == 1
    assert _delta(after, before, "tusserver_uploads_finished_total") == 1
    assert _delta(after, before, "tusserver_received_bytes_total") == length
    assert _delta(after, before, "tusserver_committed_bytes_total") == length
    assert value(after, "tusserver_uploads_in_progress") == 0
    assert _delta(after, before, "tusserver_upload_size_bytes_sum") == length
    assert _delta(after, before, "tusserver_upload_size_bytes_bucket", le="1.048576e+07") == 1
    assert _delta(after, before, "tusserver_upload_size_bytes_bucket", le="1.048576e+06") == 0
    sized = {"size_class": "1-10MiB"}
    assert _delta(after, before, "tusserver_upload_duration_seconds_count", **sized) == 1
    assert _delta(after, before, "tusserver_upload_duration_seconds_sum", **sized) >= 1.0
    assert _delta(after, before, "tusserver_patch_duration_seconds_count") == 1
    assert _delta(after, before, "tusserver_patch_duration_seconds_sum") >= 1.0
    assert _delta(after, before, "tusserver_http_requests_total", method="PATCH", status="204") == 1
    assert _delta(after, before, "tusserver_http_requests_total", method="POST", status="201") == 1
    assert _delta(after, before, "tusserver_http_request_duration_seconds_count", method="POST") == 1
    assert "tusserver_patch_duration_seconds_count" not in {
        name for (name, labels) in after if ("method", "PATCH") in labels
    }


def test_failed_patches_are_counted_by_cause(start: Callable[..., ServerProcess]) -> None:
    started = start("--network-timeout", "1")
    root = _root(started)
    before = scrape(root)
    location = httpx.post(started.url, headers={**TUS, "Upload-Length": "100"}).headers["Location"]
    path = httpx.URL(location).path

    conflict = httpx.patch(location, content=b"x" * 10, headers={**OCTETS, "Upload-Offset": "5"})
    assert conflict.status_code == 409
    wrong = base64.b64encode(hashlib.sha1(b"something else").digest()).decode()
    checksum = httpx.patch(
        location,
        content=b"y" * 10,
        headers={**OCTETS, "Upload-Offset": "0", "Upload-Checksum": f"sha1 {wrong}"},
    )
    assert checksum.status_code == 460
    with socket.create_connection(("127.0.0.1", started.port)) as raw:  # half a body, then gone
        raw.sendall(raw_patch_head(started.port, path, 0, 50) + b"z" * 20)
        time.sleep(0.3)
    after = poll(
        root,
        lambda s: _delta(s, before, "tusserver_patch_failures_total", cause="disconnect") == 1,
        what="the disconnect counted",
    )
    with socket.create_connection(("127.0.0.1", started.port)) as raw:  # a few bytes, then silence
        raw.sendall(raw_patch_head(started.port, path, 20, 50) + b"w" * 5)
        raw.settimeout(20)
        assert raw.recv(100).startswith(b"HTTP/1.1 408")
    after = scrape(root)
    for cause in ("conflict", "checksum", "disconnect", "timeout"):
        assert _delta(after, before, "tusserver_patch_failures_total", cause=cause) == 1, cause
    # 10 checksummed bytes arrived and were thrown away; what the disconnect and the timeout sent counts
    assert _delta(after, before, "tusserver_received_bytes_total") == 10 + 20 + 5
    assert _delta(after, before, "tusserver_committed_bytes_total") == 20 + 5
    assert httpx.head(location, headers=TUS).headers["Upload-Offset"] == "25"
    for status in ("409", "460", "408"):
        assert _delta(after, before, "tusserver_http_requests_total", method="PATCH", status=status) == 1


def test_abandoned_uploads_show_then_expire(start: Callable[..., ServerProcess]) -> None:
    started = start("--expire-after", "2s", "--cleanup-interval", "0.5")
    root = _root(started)  # no scrape before the upload: the first one queries the database at once
    location = httpx.post(started.url, headers={**TUS, "Upload-Length": "1000"}).headers["Location"]
    patched = httpx.patch(location, content=b"a" * 400, headers={**OCTETS, "Upload-Offset": "0"})
    assert patched.status_code == 204
    poll(
        root,
        lambda s: (
            value(s, "tusserver_incomplete_uploads") >= 1
            and value(s, "tusserver_incomplete_upload_bytes") >= 400
            and value(s, "tusserver_oldest_incomplete_upload_age_seconds") > 0
        ),
        what="the incomplete upload in the database gauges",
    )
    after = poll(
        root,
        lambda s: value(s, "tusserver_uploads_expired_total") >= 1,
        what="the abandoned upload deleted by the sweeper",
    )
    assert httpx.head(location, headers=TUS).status_code in {404, 410}
    assert value(after, "tusserver_uploads_finished_total") == 0
    if started.database_url.startswith("sqlite"):  # PostgreSQL's database is shared by the session
        poll(root, lambda s: value(s, "tusserver_incomplete_uploads") == 0, what="no incomplete upload left")


def test_workers_add_up(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", f"sqlite:///{tmp_path / 'db.sqlite'}", ["--workers", "2"])
    server.start()
    try:
        root = _root(server)
        poll(root, lambda s: True)  # both workers up
        for _ in range(6):
            with httpx.Client() as fresh:  # a new connection each: the kernel spreads them over workers
                assert fresh.post(server.url, headers={**TUS, "Upload-Length": "5"}).status_code == 201
        for _ in range(6):  # each scrape on a new connection, answered by either worker
            samples = scrape(root)
            assert value(samples, "tusserver_uploads_created_total") == 6
            assert value(samples, "tusserver_http_requests_total", method="POST", status="201") == 6
    finally:
        server.stop()
    assert "Traceback" not in server.log()


@pytest.mark.anyio
async def test_metrics_path_and_switch(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", metrics_path="/internal/metrics/")
    async with app_client(settings) as http:
        assert (await http.get("/metrics")).status_code == 404
        scraped = await http.get("/internal/metrics", headers={"Tus-Resumable": ""})
        assert scraped.status_code == 200
        assert "tusserver_http_requests_total" in scraped.text
        assert "tusserver_storage_free_bytes" in scraped.text
    async with app_client(Settings(data_dir=tmp_path / "data", disable_metrics=True)) as http:
        assert (await http.get("/metrics")).status_code == 404


def test_every_family_of_the_issue_is_exposed(start: Callable[..., ServerProcess]) -> None:
    server = start()
    assert httpx.post(server.url, headers={**TUS, "Upload-Length": "0"}).status_code == 201  # done at birth
    exposed = names(scrape(_root(server)))
    expected = {
        "tusserver_http_requests_total", "tusserver_http_request_duration_seconds_bucket",
        "tusserver_patch_duration_seconds_bucket", "tusserver_uploads_created_total",
        "tusserver_uploads_finished_total", "tusserver_uploads_terminated_total",
        "tusserver_uploads_expired_total", "tusserver_upload_duration_seconds_count",
        "tusserver_upload_size_bytes_bucket", "tusserver_received_bytes_total",
        "tusserver_committed_bytes_total", "tusserver_uploads_in_progress",
        "tusserver_incomplete_uploads", "tusserver_incomplete_upload_bytes",
        "tusserver_oldest_incomplete_upload_age_seconds", "tusserver_expired_uploads_pending",
        "tusserver_storage_free_bytes", "tusserver_storage_used_bytes", "tusserver_storage_size_bytes",
        "tusserver_lock_waits_total", "tusserver_lock_takeovers_total", "tusserver_hook_events",
        "tusserver_database_pool_connections_in_use", "tusserver_ready", "tusserver_database_up",
    }  # fmt: skip
    assert expected - exposed == set()


def test_requests_leave_nothing_for_the_garbage_collector(start: Callable[..., ServerProcess]) -> None:
    """Each request's objects are freed by reference counting as it ends; none is left in a reference
    cycle that only the garbage collector frees. (One cycle a request, through the interim-response
    sender, made the collector run every 50 requests: 4 % of small requests' CPU, 30 ms pauses.)"""
    server = start()
    root = _root(server)
    with httpx.Client() as client:
        requests = 0
        before = scrape(root)
        for _ in range(150):
            url = client.post(server.url, headers={**TUS, "Upload-Length": "3"}).headers["Location"]
            assert client.head(url, headers=TUS).status_code == 200
            patched = client.patch(url, content=b"abc", headers={**OCTETS, "Upload-Offset": "0"})
            assert patched.status_code == 204
            assert client.options(server.url).status_code in (200, 204)
            requests += 4
        after = scrape(root)

    def total(name: str) -> float:
        return sum(_delta(after, before, name, generation=generation) for generation in "012")

    collected, runs = total("python_gc_objects_collected_total"), total("python_gc_collections_total")
    assert collected < requests / 10, f"{collected:.0f} freed by {runs:.0f} collections, {requests} requests"
    assert value(after, "process_resident_memory_bytes") > 0


def test_storage_errors_are_their_own_cause() -> None:
    assert failure_cause(StorageUnavailable("EIO")) == "storage"
    assert failure_cause(UploadDataLost("gone")) == "storage"
    assert failure_cause(StorageFull("full")) == "storage_full"
    assert failure_cause(UploadGone("expired")) == "gone"


def test_a_takeover_is_counted(start: Callable[..., ServerProcess]) -> None:
    server = start()
    root = _root(server)
    location = httpx.post(server.url, headers={**TUS, "Upload-Length": "100"}).headers["Location"]
    before = scrape(root)
    with socket.create_connection(("127.0.0.1", server.port)) as raw:  # a PATCH that stalls mid-body
        raw.sendall(raw_patch_head(server.port, httpx.URL(location).path, 0, 50) + b"s" * 5)
        poll(root, lambda s: value(s, "tusserver_uploads_in_progress") == 1, what="the PATCH streaming")
        resumed = httpx.head(location, headers=TUS)  # a client resuming asks the stalled request to stop
        assert resumed.headers["Upload-Offset"] == "5"
        raw.settimeout(10)
        assert raw.recv(100).startswith(b"HTTP/1.1 409")
    after = scrape(root)
    assert _delta(after, before, "tusserver_lock_takeovers_total") == 1
    assert _delta(after, before, "tusserver_patch_failures_total", cause="conflict") == 1
    assert _delta(after, before, "tusserver_committed_bytes_total") == 5


def test_hook_deliveries_retries_and_backlog(
    start: Callable[..., ServerProcess], receiver: HookReceiver
) -> None:
    receiver.failing_until = time.monotonic() + 3600
    server = start("--hooks-http", receiver.url, "--hooks-enabled-events", "post-create,post-finish",
                   "--hooks-backoff-max", "1")  # fmt: skip
    root = _root(server)
    assert httpx.post(server.url, headers={**TUS, "Upload-Length": "0"}).status_code == 201
    poll(
        root,
        lambda s: (
            value(s, "tusserver_hook_deliveries_total", result="retry") >= 1
            and value(s, "tusserver_hook_events", state="pending") >= 1
        ),
        what="a failed delivery retried and pending",
    )
    receiver.failing_until = 0.0
    after = poll(
        root,
        lambda s: (
            value(s, "tusserver_hook_deliveries_total", result="delivered") == 2
            and value(s, "tusserver_hook_events", state="pending") == 0
        ),
        what="both events delivered, none pending",
    )
    assert value(after, "tusserver_hook_events", state="dead") == 0
    assert value(after, "tusserver_hook_deliveries_total", result="dead") == 0
