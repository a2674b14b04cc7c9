"""expiration extension (PROTOCOL.md §6) and the automatic cleanup of abandoned uploads."""

from __future__ import annotations

import asyncio
import logging
import re
import subprocess
import sys
from datetime import timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import app_client
from tests.helpers import BASE, create, patch
from tests.servers import REPO_ROOT
from tusserver import Settings
from tusserver.core import utcnow
from tusserver.runtime import running

pytestmark = pytest.mark.anyio
IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} "
    r"\d{2}:\d{2}:\d{2} GMT"
)


def expiring(tmp_path: Path, database_url: str, **options: float | None) -> Settings:
    values: dict[str, float | None] = {"cleanup_interval": 0, **options}
    return Settings(data_dir=tmp_path / "d", database_url=database_url, **values)  # type: ignore[arg-type]


async def test_upload_expires_on_post_patch_head_e2_e3_e4_e5(client: httpx.AsyncClient) -> None:
    created = await client.post(BASE, headers={"Upload-Length": "10"})
    assert IMF_FIXDATE.fullmatch(created.headers["Upload-Expires"])
    path = httpx.URL(created.headers["Location"]).path
    expires = parsedate_to_datetime(created.headers["Upload-Expires"])
    assert timedelta(hours=23) < expires - utcnow() <= timedelta(hours=24)  # default lifetime
    assert IMF_FIXDATE.fullmatch((await client.head(path)).headers["Upload-Expires"])
    await asyncio.sleep(1.1)
    patched = await patch(client, path, 0, b"12345")
    assert parsedate_to_datetime(patched.headers["Upload-Expires"]) > expires  # sliding (E-6)
    done = await patch(client, path, 5, b"67890")
    assert "Upload-Expires" not in done.headers  # finished uploads do not expire (E-8)
    assert "Upload-Expires" not in (await client.head(path)).headers


async def test_expired_upload_is_410_before_cleanup_e7(tmp_path: Path, database_url: str) -> None:
    async with app_client(expiring(tmp_path, database_url, expire_after=0.5)) as client:
        path = await create(client, 10)
        await asyncio.sleep(0.7)
        assert (await client.head(path)).status_code == 410
        assert (await patch(client, path, 0, b"abc")).status_code == 410
        assert (await client.get(path)).status_code == 410
        assert (await client.delete(path)).status_code == 410
        gone = await client.head(path)
    assert gone.content == b""


async def test_sweeper_deletes_expired_rows_and_bytes(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tusserver.sweeper")
    settings = expiring(tmp_path, database_url, expire_after=0.3, cleanup_interval=0.2)
    async with app_client(settings) as client:
        abandoned = await create(client, 10)
        assert (await patch(client, abandoned, 0, b"abc")).status_code == 204
        finished = await create(client, 3)
        assert (await patch(client, finished, 0, b"xyz")).status_code == 204
        stored = settings.uploads_dir / abandoned.rsplit("/", 1)[1]
        for _ in range(100):
            if not stored.exists():
                break
            await asyncio.sleep(0.05)
        assert not stored.exists()
        assert (await client.head(abandoned)).status_code == 404  # row gone too
        assert (await client.head(finished)).status_code == 200  # finished: kept by default
    assert any(
        abandoned.rsplit("/", 1)[1] in r.getMessage() for r in caplog.records if "upload_expired" in r.message
    )


async def test_finished_uploads_expire_after_retention(tmp_path: Path, database_url: str) -> None:
    settings = expiring(tmp_path, database_url, retain_finished=0.3)
    async with app_client(settings) as client:
        path = await create(client, 1)
        assert (await patch(client, path, 0, b"x")).status_code == 204
        assert (await client.get(path)).status_code == 200
        await asyncio.sleep(0.5)
        assert (await client.get(path)).status_code == 410


async def test_concurrent_sweepers_delete_each_upload_once_and_spare_locked_ones(
    tmp_path: Path, database_url: str
) -> None:
    settings = expiring(tmp_path, database_url, expire_after=0.2)
    async with app_client(settings) as client:
        paths = [await create(client, 5) for _ in range(12)]
    ids = [path.rsplit("/", 1)[1] for path in paths]
    await asyncio.sleep(0.3)
    async with running(settings) as first, running(settings) as second:
        store = first.service.records
        busy = await store.acquire(ids[0], "writer-elsewhere", ttl=30)
        assert busy is not None  # a request is writing this one: it must survive
        before = set(await store.expired_ids(utcnow(), 10_000))  # a shared database may hold others
        counts = await asyncio.gather(first.sweeper.sweep(), second.sweeper.sweep(), first.sweeper.sweep())
        deleted = before - set(await store.expired_ids(utcnow(), 10_000))
        assert sum(counts) == len(deleted)  # nothing was deleted twice
        assert deleted >= set(ids[1:])
        assert ids[0] not in deleted
        await store.release(ids[0], "writer-elsewhere")
        assert (await store.get(ids[0])).id == ids[0]
        assert await second.sweeper.sweep() == 1
    assert list(settings.uploads_dir.iterdir()) == []


def test_cleanup_command_sweeps_once(tmp_path: Path, database_url: str) -> None:
    async def make_expired() -> None:
        async with app_client(expiring(tmp_path, database_url, expire_after=0.1)) as client:
            for _ in range(3):
                await create(client, 4)
        await asyncio.sleep(0.2)

    asyncio.run(make_expired())
    command = [sys.executable, "-m", "tusserver", "cleanup", "--data-dir", str(tmp_path / "d")]
    result = subprocess.run(
        [*command, "--database-url", database_url], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"deleted \d+ expired upload\(s\)", result.stdout)
    assert list((tmp_path / "d" / "uploads").iterdir()) == []
