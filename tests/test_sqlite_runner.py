"""The SQLite statement runner (`statements.SqliteRunner`): statements in autocommit mode, and a
transaction that a failure left open cannot swallow the writes that follow."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import app_client
from tests.helpers import create
from tusserver import Settings, sqlite_groups, statements
from tusserver.core import Upload, new_upload_id, utcnow
from tusserver.database import make_engine
from tusserver.errors import ServiceUnavailable
from tusserver.records import UploadRecords

pytestmark = pytest.mark.anyio


async def test_a_transaction_left_open_is_rolled_back_before_the_next_statement(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d")
    async with app_client(settings) as client:
        upload_id = (await create(client, 3)).rsplit("/", 1)[1]
    database = tmp_path / "d" / "tusserver.db"
    engine = make_engine(f"sqlite:///{database}")
    store = UploadRecords(engine)
    try:
        await store.get(upload_id)  # the runner's connection is open now
        runner: Any = store.runner
        raw = runner._connection.connection.dbapi_connection
        raw.execute("BEGIN")  # as if a statement and then its ROLLBACK had failed
        raw.execute('UPDATE upload SET "offset" = 1 WHERE id = ?', (upload_id,))
        assert await store.acquire(upload_id, "owner-1", ttl=30) is not None
        with contextlib.closing(sqlite3.connect(database)) as other:  # another connection: committed rows
            row = other.execute('SELECT "offset", lock_owner FROM upload WHERE id = ?', (upload_id,))
            assert row.fetchone() == (0, "owner-1")
    finally:
        await store.close()
        await engine.dispose()


def _wal_restarts(wal: Path) -> int:
    """The WAL header's checkpoint sequence number: SQLite adds one each time the WAL starts over."""
    header = wal.read_bytes()[:32] if wal.exists() else b""
    return int.from_bytes(header[12:16], "big") if len(header) == 32 else 0


async def test_the_wal_starts_over_under_a_steady_stream_of_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PASSIVE checkpoint never catches up with writes that never pause, so the WAL only grew (330 MB
    in 8 s of POST + HEAD); the runner's checkpoint ends with a RESTART and the file is cut back."""
    monkeypatch.setattr(statements, "CHECKPOINT_EVERY", 0.05)
    limit = 256 * 1024
    monkeypatch.setattr(statements, "WAL_SIZE_LIMIT", limit)
    database = tmp_path / "steady.sqlite"
    runner = statements.SqliteRunner(str(database))
    wal = Path(f"{database}-wal")
    try:
        await runner.run(sa.text("CREATE TABLE item (id INTEGER PRIMARY KEY, body TEXT)"))
        filler = "x" * 2000  # about half a page: each commit appends a frame or two to the WAL
        restarts_seen = {_wal_restarts(wal)}
        sizes: list[int] = []
        deadline = time.monotonic() + 20
        while len(restarts_seen) < 4 and time.monotonic() < deadline:
            await runner.run(sa.text("INSERT INTO item (body) VALUES (:body)"), {"body": filler})
            await asyncio.sleep(0)  # as between requests: the checkpointer gets its turn, writes go on
            restarts_seen.add(_wal_restarts(wal))
            sizes.append(wal.stat().st_size)
        assert len(restarts_seen) >= 4, f"the WAL never started over: {restarts_seen}, {len(sizes)} rows"
        # Cut back to the limit by the first commit after a restart: the file shrank, from beyond it.
        shrunk = [after for before, after in itertools.pairwise(sizes) if after < before]
        assert shrunk, "the WAL file never shrank"
        assert max(sizes) > limit
        assert min(shrunk) <= limit + 64 * 1024
    finally:
        await runner.close()


async def test_a_database_another_process_holds_is_waited_for_off_the_loop(tmp_path: Path) -> None:
    """Another process's write lock (`--workers`, `tusserver cleanup`): the statement is retried
    with `asyncio.sleep` until the lock is free, while other requests go on (the loop never sleeps
    inside SQLite)."""
    database = tmp_path / "shared.sqlite"
    runner = statements.SqliteRunner(str(database))
    holder = sqlite3.connect(database, isolation_level=None)
    ticks = 0

    async def other_requests() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    try:
        await runner.run(sa.text("CREATE TABLE item (id INTEGER PRIMARY KEY)"))
        holder.execute("BEGIN IMMEDIATE")  # the write lock, as another process's transaction
        asyncio.get_running_loop().call_later(0.05, holder.commit)
        ticking = asyncio.create_task(other_requests())
        started = time.monotonic()
        await runner.run(sa.text("INSERT INTO item (id) VALUES (1)"))
        waited = time.monotonic() - started
        ticking.cancel()
        assert 0.04 <= waited < 1.0
        assert ticks >= 10, ticks  # the loop served others while the statement waited
        assert (await runner.run(sa.text("SELECT count(*) FROM item"))).rows[0][0] == 1
    finally:
        holder.close()
        await runner.close()


async def test_a_database_locked_for_too_long_answers_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(statements, "BUSY_PATIENCE", 0.3)
    database = tmp_path / "stuck.sqlite"
    runner = statements.SqliteRunner(str(database))
    holder = sqlite3.connect(database, isolation_level=None)
    try:
        await runner.run(sa.text("CREATE TABLE item (id INTEGER PRIMARY KEY)"))
        holder.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable) as refused:
            await runner.run(sa.text("INSERT INTO item (id) VALUES (1)"))
        assert 0.3 <= time.monotonic() - started < 1.0
        assert refused.value.status == 503
        assert refused.value.headers["Retry-After"] == statements.RETRY_AFTER_SECONDS
    finally:
        holder.rollback()
        holder.close()
        await runner.close()


async def test_writes_held_off_by_the_wal_restart_wait_for_it_and_then_commit_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpoint's RESTART holds writers off while it runs (3-8 ms under a stream of POSTs).
    The writes it held off wait for it to end, without polling, and then commit as one group, as
    they would have without it. Here the RESTART lasts until the test ends it."""
    settings = Settings(data_dir=tmp_path / "d")
    async with app_client(settings):
        pass  # the schema
    monkeypatch.setattr(statements, "CHECKPOINT_EVERY", 0.01)
    holding, released = threading.Event(), threading.Event()

    def restart_until_released(database: str) -> None:
        with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as connection:
            connection.execute("BEGIN IMMEDIATE")  # writers held off, as by RESTART
            holding.set()
            released.wait(10)
            connection.execute("ROLLBACK")

    def no_polling(retries: int) -> float:
        raise AssertionError("a write held off by our own checkpoint polled for the lock")

    groups: list[int] = []
    tried = asyncio.Event()
    run_group = sqlite_groups.run_group

    def counted(raw: Any, members: Any) -> Any:
        groups.append(len(members))
        tried.set()
        return run_group(raw, members)

    monkeypatch.setattr(statements, "_restart_wal", restart_until_released)
    monkeypatch.setattr(statements, "_busy_delay", no_polling)
    monkeypatch.setattr(statements, "run_group", counted)
    engine = make_engine(f"sqlite:///{tmp_path / 'd' / 'tusserver.db'}")
    store = UploadRecords(engine)
    try:
        await store.known_ids(["0" * 32])  # a statement: the checkpoints start
        assert await asyncio.to_thread(holding.wait, 10), "no checkpoint started"
        now = utcnow()
        uploads = [
            Upload(id=new_upload_id(), offset=0, length=10, created_at=now, updated_at=now) for _ in range(8)
        ]
        writes = [asyncio.ensure_future(store.add(upload)) for upload in uploads]
        await asyncio.wait_for(tried.wait(), 10)  # together once, and held off
        assert groups == [8]
        assert not any(write.done() for write in writes)
        released.set()
        await asyncio.wait_for(asyncio.gather(*writes), 10)
        assert groups == [8, 8]
        assert await store.known_ids([upload.id for upload in uploads]) == {upload.id for upload in uploads}
    finally:
        released.set()
        await store.close()
        await engine.dispose()
