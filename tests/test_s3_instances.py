"""Three instances behind nginx round-robin sharing only PostgreSQL and an S3 bucket (moto): each has a
data directory of its own, so every byte another instance needs must come from the bucket and every
piece of state from the database. 20 concurrent tuspy uploads survive kill -9 chaos byte-identical;
an upload finished on one instance downloads through another; nothing is left in the bucket but the
finished objects once orphans older than the grace period are reaped."""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.balancer import Balancer, kill_9_chaos
from tests.helpers import MiB, random_file, sha256_file
from tests.s3server import MotoServer, keys, multipart_uploads, object_bytes
from tests.servers import ServerProcess
from tests.test_end_to_end import uploader, url_of
from tests.test_load_balancer import Deployment, create_with_retries, in_background
from tests.test_s3_storage import TUS, cleanup_once, s3_args, upload_id

pytestmark = pytest.mark.postgresql


def deploy_on_s3(tmp_path: Path, database_url: str, s3_server: MotoServer, bucket: str) -> Deployment:
    """Three instances, each with a data directory of its own, behind nginx."""
    args = s3_args(s3_server, bucket)
    instances = [ServerProcess(tmp_path / f"instance{number}", database_url, args) for number in range(3)]
    deployed = Deployment(Balancer(tmp_path / "nginx", instances), instances, tmp_path)
    try:
        for instance in instances:
            instance.start()
        deployed.balancer.start()
    except BaseException:  # never leave server processes behind a failed start
        deployed.stop()
        raise
    return deployed


@pytest.fixture
def deployment(
    tmp_path: Path, postgres_database: str, s3_server: MotoServer, s3_bucket: str
) -> Iterator[Deployment]:
    deployed = deploy_on_s3(tmp_path, postgres_database, s3_server, s3_bucket)
    yield deployed
    deployed.stop()


def test_an_upload_finished_on_one_instance_downloads_through_another(
    deployment: Deployment, tmp_path: Path
) -> None:
    first, second = deployment.instances[0], deployment.instances[1]
    source = random_file(tmp_path / "one.bin", 7 * MiB + 3)
    with source.open("rb") as stream:
        upload = uploader(first.url, stream, chunk_size=3 * MiB)
        upload.upload()
    elsewhere = second.url + upload_id(url_of(upload))
    response = httpx.get(elsewhere, headers=TUS, timeout=60)
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == sha256_file(source)


def test_twenty_uploads_survive_kill_9_chaos(
    deployment: Deployment,
    tmp_path: Path,
    postgres_database: str,
    s3_server: MotoServer,
    s3_bucket: str,
) -> None:
    rng = random.Random(11)
    sources = [random_file(tmp_path / f"src{n}.bin", rng.randint(MiB, 14 * MiB)) for n in range(20)]
    chunk_sizes = [rng.randint(2, 5) * MiB for _ in sources]
    done = threading.Event()

    def one(index: int) -> str:
        url = create_with_retries(deployment.balancer.url, sources[index].stat().st_size)
        with sources[index].open("rb") as stream:
            job = uploader(
                deployment.balancer.url,
                stream,
                url=url,
                chunk_size=chunk_sizes[index],
                retries=40,
                retry_delay=0.5,
            )
            job.upload()
        return url_of(job)

    thread, errors = in_background(lambda: kill_9_chaos(deployment.instances, done, seed=5, every=2.0))
    try:
        with ThreadPoolExecutor(len(sources)) as pool:
            urls = list(pool.map(one, range(len(sources))))
    finally:
        done.set()
        thread.join(timeout=60)
    assert not errors
    client = s3_server.client()
    for source, url in zip(sources, urls, strict=True):
        stored = object_bytes(client, s3_bucket, f"tus/{upload_id(url)}")
        assert hashlib.sha256(stored).hexdigest() == sha256_file(source), url
    # What kill -9 left (a multipart upload created for a row never written): reaped past the grace.
    cleanup_once(postgres_database, tmp_path / "cleanup", s3_server, s3_bucket)
    finished = {f"tus/{upload_id(url)}" for url in urls}
    assert finished <= set(keys(client, s3_bucket))
    assert not [key for key in keys(client, s3_bucket) if ".tail-" in key]
    assert multipart_uploads(client, s3_bucket) == []
