"""The disk cannot leak (issue 8, point 11): stored bytes without a row and rows whose bytes are gone
are found and reaped once older than `--orphan-grace`, by two real server processes sweeping at once
under traffic, and nothing in use is touched."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import new_postgres_database
from tests.faults import age_row
from tests.servers import ServerProcess
from tusserver.core import new_upload_id

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}
SWEEPING = ["--cleanup-interval", "0.2", "--orphan-grace", "2"]
LONG_AGO = 3600.0


def _upload(base: str, data: bytes, finish: bool = True, concat: str | None = None) -> str:
    headers = {**TUS, "Upload-Length": str(len(data))} | ({"Upload-Concat": concat} if concat else {})
    url = httpx.post(base, headers=headers).headers["Location"]
    sent = data if finish else data[: len(data) // 2]
    answer = httpx.patch(url, content=sent, headers={**OCTETS, "Upload-Offset": "0"})
    assert answer.status_code == 204, answer.text
    return str(url)


class Traffic(threading.Thread):
    """Uploads, finished and unfinished, and concatenations, alternately on both servers, until
    stopped; remembers what each upload must hold."""

    def __init__(self, bases: list[str]) -> None:
        super().__init__(daemon=True)
        self.bases = bases
        self.expected: dict[str, bytes] = {}
        self.unfinished: dict[str, int] = {}
        self.stop = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(8)
        try:
            while not self.stop.is_set():
                base = rng.choice(self.bases)
                data = rng.randbytes(rng.randint(1, 200_000))
                kind = rng.random()
                if kind < 0.2:
                    url = _upload(base, data, finish=False)
                    self.unfinished[url] = len(data) // 2
                elif kind < 0.4:
                    parts = [
                        _upload(base, data[:100], concat="partial"),
                        _upload(base, data[100:], concat="partial"),
                    ]
                    final = httpx.post(base, headers={**TUS, "Upload-Concat": "final;" + " ".join(parts)})
                    assert final.status_code == 201, final.text
                    self.expected[final.headers["Location"]] = data
                else:
                    self.expected[_upload(base, data)] = data
        except BaseException as exc:
            self.failure = exc


def test_two_sweepers_reap_orphans_under_traffic_and_spare_everything_in_use(
    tmp_path: Path, database_url: str
) -> None:
    if database_url.startswith("postgresql"):  # a database of its own: rows of other tests have
        database_url = new_postgres_database()  # their bytes elsewhere, so they would look lost
    data_dir = tmp_path / "data"
    first = ServerProcess(data_dir, database_url, extra_args=SWEEPING)
    second = ServerProcess(data_dir, database_url, extra_args=SWEEPING)
    first.start()
    uploads = data_dir / "uploads"
    try:
        second.start()
        # Debris of crashes: bytes whose row never came (an assembly that died), and rows whose
        # bytes are gone (a DELETE that died between the two, a disk replaced by hand).
        orphan_files = [uploads / new_upload_id() for _ in range(3)]
        for path in orphan_files:
            path.write_bytes(b"debris")
            os.utime(path, (time.time() - LONG_AGO, time.time() - LONG_AGO))
        fresh_orphan = uploads / new_upload_id()  # within the grace period (for the whole test):
        fresh_orphan.write_bytes(b"new")  # it may be an upload being assembled right now
        os.utime(fresh_orphan, (time.time() + LONG_AGO, time.time() + LONG_AGO))
        lost_rows = [_upload(first.url, b"lost bytes") for _ in range(3)]
        for url in lost_rows:
            (uploads / url.rsplit("/", 1)[1]).unlink()
            age_row(database_url, url.rsplit("/", 1)[1], LONG_AGO)
        # An old upload that never got a byte has no file (one is made by the first write): it is
        # not a row whose bytes are lost.
        idle = httpx.post(first.url, headers={**TUS, "Upload-Length": "5"}).headers["Location"]
        assert not (uploads / idle.rsplit("/", 1)[1]).exists()
        age_row(database_url, idle.rsplit("/", 1)[1], LONG_AGO)

        traffic = Traffic([first.url, second.url])
        traffic.start()
        traffic_started = time.monotonic()
        deadline = time.monotonic() + 30
        while any(path.exists() for path in orphan_files) or any(
            httpx.head(url, headers=TUS).status_code != 404 for url in lost_rows
        ):
            assert time.monotonic() < deadline, "orphans were not reaped"
            assert traffic.is_alive(), traffic.failure
            time.sleep(0.1)
        # Traffic for longer than the grace period, so that uploads of its start are old enough to
        # be considered, and across several more orphan scans (every 0.5 s).
        while len(traffic.expected) < 20 or time.monotonic() - traffic_started < 4:
            assert time.monotonic() < deadline
            assert traffic.is_alive(), traffic.failure
            time.sleep(0.1)
        traffic.stop.set()
        traffic.join(timeout=30)
        assert traffic.failure is None, traffic.failure

        for url, data in traffic.expected.items():
            assert httpx.get(url).content == data, url
        for url, offset in traffic.unfinished.items():
            head = httpx.head(url, headers=TUS)
            assert head.status_code == 200, url
            assert head.headers["Upload-Offset"] == str(offset), url
            assert (uploads / url.rsplit("/", 1)[1]).exists()
        assert httpx.head(idle, headers=TUS).headers["Upload-Offset"] == "0"  # survived every scan
        written = httpx.patch(idle, content=b"hello", headers={**OCTETS, "Upload-Offset": "0"})
        assert written.status_code == 204
        assert httpx.get(idle).content == b"hello"
    finally:
        first.stop()
        second.stop()
    logs = first.log() + second.log()
    assert "Traceback" not in logs
    assert logs.count("orphan_bytes_removed") == len(orphan_files)  # each once, by one of the two
    assert logs.count("orphan_row_removed") == len(lost_rows)
    assert fresh_orphan.exists()  # younger than the grace period


def test_an_empty_data_directory_is_not_taken_for_lost_files(tmp_path: Path, database_url: str) -> None:
    """An unmounted volume or a wrong --data-dir makes every upload look lost: no row is reaped."""
    if database_url.startswith("postgresql"):
        database_url = new_postgres_database()
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, database_url)
    server.start()
    try:
        urls = [_upload(server.url, b"kept") for _ in range(12)]
    finally:
        server.stop()
    for url in urls:
        age_row(database_url, url.rsplit("/", 1)[1], LONG_AGO)
    (data_dir / "uploads").rename(tmp_path / "elsewhere")  # the volume is not mounted
    (data_dir / "uploads").mkdir()
    sweeping = ServerProcess(data_dir, database_url, extra_args=SWEEPING)
    sweeping.start()
    try:
        deadline = time.monotonic() + 20
        while "orphan_rows_not_removed" not in sweeping.log():
            assert time.monotonic() < deadline, "the scan never ran"
            time.sleep(0.1)
        for url in urls:
            assert httpx.head(sweeping.url + url.rsplit("/", 1)[1], headers=TUS).status_code == 200
    finally:
        sweeping.stop()
    assert "orphan_row_removed" not in sweeping.log()
