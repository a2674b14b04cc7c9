"""How many SQL statements each request costs, counted on the engine that runs them: HEAD of an upload
nobody holds costs one, POST one, a short PATCH two (take the lease; commit the offset and release it
in the same compare-and-set). A change that adds a round trip to these paths fails here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import AppClient
from tests.helpers import BASE, create, patch
from tusserver import Settings
from tusserver.statements import Params, Ran, StatementRunner

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
