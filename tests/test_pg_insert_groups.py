"""On PostgreSQL the uploads that requests create in one turn of the event loop are inserted in one
round trip (`pg_direct.DirectRunner`: asyncpg's `executemany`, atomic), and each request still gets
what it alone would have got: a request whose upload ID is taken gets that error, the others' rows
are stored."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from tests.conftest import new_postgres_database
from tusserver.core import Upload, new_upload_id, utcnow
from tusserver.database import make_engine, migrate
from tusserver.records import UploadRecords

pytestmark = [pytest.mark.anyio, pytest.mark.postgresql]


@pytest.fixture
def pg_url() -> str:
    return new_postgres_database()


@pytest.fixture
async def pg_records(pg_url: str) -> AsyncIterator[tuple[UploadRecords, str]]:
    url = pg_url
    engine = make_engine(url)
    await migrate(engine)
    records = UploadRecords(engine)
    try:
        yield records, url
    finally:
        await records.close()
        await engine.dispose()


def _upload(upload_id: str | None = None) -> Upload:
    now = utcnow()
    return Upload(
        id=upload_id or new_upload_id(), offset=0, length=10, created_at=now, updated_at=now,
        expires_at=now + timedelta(days=1),
    )  # fmt: skip


async def _transactions(url: str, ids: list[str]) -> int:
    """How many transactions inserted these rows (`xmin` is the inserting transaction's ID)."""
    connection = await asyncpg.connect(url)
    try:
        found = await connection.fetchval(
            "SELECT count(DISTINCT xmin::text) FROM upload WHERE id = ANY($1::text[])", ids
        )
        stored = await connection.fetchval("SELECT count(*) FROM upload WHERE id = ANY($1::text[])", ids)
    finally:
        await connection.close()
    assert stored == len(ids)
    return int(found)


async def test_the_uploads_created_in_one_loop_turn_are_inserted_together(
    pg_records: tuple[UploadRecords, str],
) -> None:
    records, url = pg_records
    uploads = [_upload() for _ in range(8)]
    await asyncio.gather(*(records.add(upload) for upload in uploads))
    assert await _transactions(url, [upload.id for upload in uploads]) == 1
    alone = _upload()
    await records.add(alone)
    assert (await records.get(alone.id)).length == 10


async def test_a_taken_upload_id_fails_alone_and_the_others_are_stored(
    pg_records: tuple[UploadRecords, str],
) -> None:
    records, url = pg_records
    taken = _upload()
    await records.add(taken)
    others = [_upload() for _ in range(4)]
    outcomes = await asyncio.gather(
        *(records.add(upload) for upload in others[:2]),
        records.add(_upload(taken.id)),
        *(records.add(upload) for upload in others[2:]),
        return_exceptions=True,
    )
    assert isinstance(outcomes[2], asyncpg.UniqueViolationError)
    assert [outcome for index, outcome in enumerate(outcomes) if index != 2] == [None] * 4
    assert (
        await _transactions(url, [upload.id for upload in others]) == 4
    )  # each alone, after the group failed
