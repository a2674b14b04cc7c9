"""The SQLite statement runner (`statements.SqliteRunner`): statements in autocommit mode, and a
transaction that a failure left open cannot swallow the writes that follow."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import app_client
from tests.helpers import create
from tusserver import Settings
from tusserver.database import make_engine
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
