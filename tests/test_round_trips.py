"""How many SQL statements each request costs, counted on the engine that runs them: HEAD of an upload
nobody holds costs one, POST one, a short PATCH two (take the lease; commit the offset and release it
in the same compare-and-set). A change that adds a round trip to these paths fails here, and so does
a statement of these paths or of the lease keeper that scans the upload table instead of finding its
rows by key."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from tests.conftest import AppClient
from tests.helpers import BASE, create, patch
from tusserver import Settings, records
from tusserver.database import make_engine, migrate
from tusserver.prepared import Params, Ran
from tusserver.statements import StatementRunner

pytestmark = pytest.mark.anyio


class Counter:
    """Wraps the records' statement runner: each `run` is one statement in one round trip (a
    single autocommitted statement on PostgreSQL, one statement and its commit on SQLite)."""

    def __init__(self, runner: StatementRunner) -> None:
        self._run = runner.run
        self.statements: list[str] = []

    async def run(self, statement: sa.Executable, params: Params | None = None) -> Ran:
        self.statements.append(type(statement).__name__.upper())
        return await self._run(statement, params)

    @contextmanager
    def counting(self) -> Iterator[list[str]]:
        self.statements.clear()
        yield self.statements


@pytest.fixture
async def counted(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Counter]]:
    app_client = AppClient(settings)
    async with app_client as client:
        records = app_client.app.state.service.records
        counter = Counter(records._runner)
        records._runner.run = counter.run
        yield client, counter


async def test_post_costs_one_statement(counted: tuple[httpx.AsyncClient, Counter]) -> None:
    client, counter = counted
    with counter.counting() as statements:
        assert (await client.post(BASE, headers={"Upload-Length": "10"})).status_code == 201
    assert statements == ["INSERT"]


async def test_head_of_a_free_upload_costs_one_statement(counted: tuple[httpx.AsyncClient, Counter]) -> None:
    client, counter = counted
    path = await create(client, 10)
    with counter.counting() as statements:
        assert (await client.head(path)).status_code == 200
    assert statements == ["SELECT"]


async def test_a_short_patch_costs_two_statements(counted: tuple[httpx.AsyncClient, Counter]) -> None:
    client, counter = counted
    path = await create(client, 10)
    with counter.counting() as statements:
        assert (await patch(client, path, 0, b"01234")).status_code == 204
    assert statements == ["UPDATE", "UPDATE"]  # acquire; commit-and-release


KEYED = {
    name: getattr(records, name)
    for name in ("_GET", "_EXISTS", "_ACQUIRE", "_ASK_RELEASE", "_RENEW", "_RELEASE", "_COMMIT_RELEASE",
                 "_COMMIT_KEEP", "_FORGET", "_DELETE")
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(KEYED))
def test_the_statements_of_requests_and_renewals_find_rows_by_key(name: str, tmp_path: Path) -> None:
    """No statement a request or the lease keeper runs reads the whole upload table: on SQLite its
    plan searches by the primary key. (The renewal once matched on `lock_owner` alone, which has no
    index: a full scan a second per instance, 4 ms at 50,000 uploads.)"""
    database = tmp_path / "plans.db"
    asyncio.run(_migrated(f"sqlite:///{database}"))
    compiled = KEYED[name].compile(dialect=sqlite.dialect())
    sql = re.sub(r"__\[POSTCOMPILE_\w+\]", "?", compiled.string)  # an IN list of one
    arguments = [0] * len(compiled.positiontup or ())
    with contextlib.closing(sqlite3.connect(database)) as connection:
        plan = connection.execute(f"EXPLAIN QUERY PLAN {sql}", arguments).fetchall()
    details = " | ".join(str(row[-1]) for row in plan)
    assert "SCAN upload" not in details
    assert re.search(r"SEARCH upload USING (COVERING )?INDEX sqlite_autoindex_upload_1 \(id=\?\)", details)


async def _migrated(url: str) -> None:
    engine = make_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
