"""Three instances behind nginx round-robin, sharing PostgreSQL and one data directory (issue 4).

No sticky sessions: consecutive requests of one upload land on different instances. Covered: many
concurrent uploads, takeover of a stalled request from another instance, kill -9 chaos, SIGTERM of one
instance, and a PostgreSQL outage. Every loop is bounded in count and time.
"""

from __future__ import annotations

import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.balancer import Balancer, kill_9_chaos
from tests.helpers import MiB, random_file, raw_patch_head, sha256_file, stored_file
from tests.pgcluster import PostgresCluster
from tests.servers import ServerProcess
from tests.test_end_to_end import uploader, url_of

pytestmark = pytest.mark.postgresql
TUS = {"Tus-Resumable": "1.0.0"}


@dataclass
class Deployment:
    balancer: Balancer
    instances: list[ServerProcess]
    data_dir: Path

    def stop(self) -> None:
        try:
            self.balancer.stop()
        finally:
            for instance in self.instances:
                instance.stop()


def deploy(tmp_path: Path, database_url: str, count: int = 3) -> Deployment:
    data_dir = tmp_path / "shared-data"
    instances = [ServerProcess(data_dir=data_dir, database_url=database_url) for _ in range(count)]
    try:
        for instance in instances:
            instance.start()
        balancer = Balancer(tmp_path / "nginx", instances)
        balancer.start()
    except BaseException:  # never leave server processes behind a failed start
        for instance in instances:
            instance.stop()
        raise
    return Deployment(balancer, instances, data_dir)


@pytest.fixture
def deployment(tmp_path: Path, postgres_database: str) -> Iterator[Deployment]:
    deployed = deploy(tmp_path, postgres_database)
    yield deployed
    deployed.stop()


def create_with_retries(endpoint: str, length: int) -> str:
    """POST through the balancer, retrying while an instance is down (bounded)."""
    for _ in range(40):
        try:
            response = httpx.post(endpoint, headers={**TUS, "Upload-Length": str(length)}, timeout=30)
            if response.status_code == 201:
                return response.headers["Location"]
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise AssertionError("could not create an upload through the balancer")


def upload_all(endpoint: str, sources: list[Path], data_dir: Path, retries: int = 0) -> None:
    """Upload every file concurrently with tuspy through `endpoint`; each stored file must match."""
    rng = random.Random(7)
    chunk_sizes = [rng.randint(2, 5) * MiB for _ in sources]

    def one(index: int) -> str:
        url = create_with_retries(endpoint, sources[index].stat().st_size)
        with sources[index].open("rb") as stream:
            job = uploader(
                endpoint, stream, url=url, chunk_size=chunk_sizes[index], retries=retries, retry_delay=0.5
            )
            job.upload()
        return url_of(job)

    with ThreadPoolExecutor(len(sources)) as pool:
        urls = list(pool.map(one, range(len(sources))))
    for source, url in zip(sources, urls, strict=True):
        assert sha256_file(stored_file(data_dir, url)) == sha256_file(source), url


def sources_of(tmp_path: Path, count: int, low: int, high: int) -> list[Path]:
    rng = random.Random(count * 1000 + high)
    return [
        random_file(tmp_path / f"src{index}.bin", rng.randint(low * MiB, high * MiB))
        for index in range(count)
    ]


def test_twenty_concurrent_uploads_through_round_robin(deployment: Deployment, tmp_path: Path) -> None:
    """(a) 20 tuspy uploads of 1-64 MiB in 2-5 MiB chunks; no affinity, no lost byte."""
    upload_all(deployment.balancer.url, sources_of(tmp_path, 20, 1, 64), deployment.data_dir)
    assert deployment.balancer.served_by() == {instance.port for instance in deployment.instances}


def test_bodies_above_the_proxy_limit_are_refused_by_nginx(deployment: Deployment) -> None:
    url = create_with_retries(deployment.balancer.url, 16 * MiB)
    headers = {**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    assert httpx.patch(url, content=b"x" * (9 * MiB), headers=headers).status_code == 413
    assert httpx.head(url, headers=TUS).headers["Upload-Offset"] == "0"


def stalled_patch(balancer: Balancer, url: str, total: int, sent: bytes) -> socket.socket:
    """A PATCH whose client went silent after `sent`, connection left open (server side stays open)."""
    connection = socket.create_connection(("127.0.0.1", balancer.port))
    connection.sendall(raw_patch_head(balancer.port, httpx.URL(url).path, 0, total) + sent)
    return connection


def test_resume_takes_over_a_stalled_request_on_another_instance(
    deployment: Deployment, tmp_path: Path
) -> None:
    """(b) the client's connection dies mid-PATCH but the server side stays open; the client resumes
    through nginx (another instance) without meeting 423."""
    total = 6 * MiB
    source = random_file(tmp_path / "stall.bin", total)
    url = create_with_retries(deployment.balancer.url, total)
    data = source.read_bytes()
    stalled = stalled_patch(deployment.balancer, url, total, data[: 2 * MiB])
    try:
        time.sleep(1.0)  # the holder is now idle in the middle of its body
        delays = []
        for _ in range(3):  # HEAD lands on the other instances in turn
            started = time.monotonic()
            status = httpx.head(url, headers=TUS, timeout=30)
            delays.append(time.monotonic() - started)
            assert status.status_code == 200
        offset = int(status.headers["Upload-Offset"])
        assert 0 < offset <= 2 * MiB
        headers = {**TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
        rest = httpx.patch(url, content=data[offset:], headers=headers, timeout=30)
        assert rest.status_code == 204, rest.text
    finally:
        stalled.close()
    assert sha256_file(stored_file(deployment.data_dir, url)) == sha256_file(source)
    assert max(delays) < 3.0, delays  # takeover, not a lock timeout
    print(f"takeover delays (s): {[round(delay, 2) for delay in delays]}")


def in_background(action: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def test_chaos_kill_9_random_instances_during_uploads(deployment: Deployment, tmp_path: Path) -> None:
    """(c) a bounded loop kills -9 a random instance every few seconds and restarts it."""
    sources = sources_of(tmp_path, 20, 1, 24)
    done = threading.Event()
    thread, errors = in_background(lambda: kill_9_chaos(deployment.instances, done, seed=3, every=2.5))
    try:
        upload_all(deployment.balancer.url, sources, deployment.data_dir, retries=40)
    finally:
        done.set()
        thread.join(timeout=60)
    assert not errors


def test_sigterm_one_instance_mid_upload(deployment: Deployment, tmp_path: Path) -> None:
    """(d) an instance stopped gracefully: its clients resume on the others with nothing lost."""
    sources = sources_of(tmp_path, 6, 16, 32)
    victim = deployment.instances[0]

    def stop_then_restart() -> None:
        time.sleep(1.5)
        assert victim.process is not None
        victim.process.send_signal(signal.SIGTERM)
        victim.process.wait(timeout=15)
        time.sleep(1.0)
        victim.start()

    thread, errors = in_background(stop_then_restart)
    upload_all(deployment.balancer.url, sources, deployment.data_dir, retries=20)
    thread.join(timeout=60)
    assert not errors
    assert "Traceback" not in victim.log()


def test_postgresql_outage_during_uploads(tmp_path: Path) -> None:
    """(e) the database stops and starts mid-run: 503s while it is down, every upload finishes."""
    cluster = PostgresCluster()
    cluster.start()
    deployed = deploy(tmp_path, cluster.url)
    try:
        probe = create_with_retries(deployed.balancer.url, 10)
        sources = sources_of(tmp_path, 6, 8, 24)

        def outage() -> None:
            time.sleep(1.5)
            cluster.stop()
            statuses = {httpx.head(probe, headers=TUS, timeout=30).status_code for _ in range(3)}
            assert statuses == {503}, statuses
            time.sleep(2.0)
            cluster.start()

        thread, errors = in_background(outage)
        upload_all(deployed.balancer.url, sources, deployed.data_dir, retries=40)
        thread.join(timeout=60)
        assert not errors
    finally:
        deployed.stop()
        cluster.remove()
    for instance in deployed.instances:
        assert "Traceback" not in instance.log()
