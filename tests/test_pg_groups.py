"""On PostgreSQL the uploads that requests create in one turn of the event loop are inserted in one
round trip (`pg_direct.DirectRunner`: asyncpg's `executemany`, atomic), and the uploads they look up
are read in one SELECT; each request still gets what it alone would have got: a request whose upload
ID is taken gets that error while the others' rows are stored, and each lookup gets its own row (or
404), with its own lease state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from tests.conftest import new_postgres_database
from tusserver.core import Upload, new_upload_id, utcnow
from tusserver.database import make_engine, migrate
from tusserver.errors import UploadNotFound
from tusserver.prepared import Params, Plan, Ran
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


async def test_the_lookups_of_one_loop_turn_share_one_select(pg_records: tuple[UploadRecords, str]) -> None:
    records, _ = pg_records
    uploads = [_upload() for _ in range(3)]
    for upload in uploads:
        await records.add(upload)
    assert await records.acquire(uploads[0].id, "test:1", 60) is not None
    statements = _counting_statements(records)
    unknown = new_upload_id()
    asked = [uploads[0].id, uploads[1].id, unknown, uploads[1].id, uploads[2].id]
    answers = await asyncio.gather(
        *(records.get_with_lock(upload_id) for upload_id in asked), return_exceptions=True
    )
    assert len(statements) == 1
    assert isinstance(answers[2], UploadNotFound)
    found = [answer for answer in answers if not isinstance(answer, BaseException)]
    assert [(upload.id, held) for upload, held in found] == [
        (uploads[0].id, True), (uploads[1].id, False), (uploads[1].id, False), (uploads[2].id, False)
    ]  # fmt: skip
    assert all(upload.length == 10 and upload.offset == 0 for upload, _ in found)
    alone = await records.get_with_lock(uploads[2].id)
    assert alone[0].id == uploads[2].id
    assert len(statements) == 2  # a lookup alone: the one-key statement


def _counting_statements(records: UploadRecords) -> list[str]:
    """The statements `records` sends to asyncpg from now on (its runner's one way there)."""
    runner = records._runner
    sent: list[str] = []
    execute = runner._execute  # type: ignore[attr-defined]

    async def counted(connection: asyncpg.Connection, prepared: Plan, params: Params) -> Ran:
        sent.append(prepared.sql)
        result: Ran = await execute(connection, prepared, params)
        return result

    runner._execute = counted  # type: ignore[attr-defined]
    return sent


async def test_lookups_keep_to_the_index_whatever_the_statistics_say(
    pg_records: tuple[UploadRecords, str],
) -> None:
    """PostgreSQL keeps the plan it made for a prepared `= ANY(...)` while the table was nearly empty
    (a sequential scan) until statistics are gathered again: the request connections forbid that."""
    records, _ = pg_records
    setting = await records._runner._on_connection(  # type: ignore[attr-defined]
        lambda connection: connection.fetchval("SHOW enable_seqscan")
    )
    assert setting == "off"
