"""Schema migrations: the database is built only by Alembic, every revision downgrades, and the
result matches the tables the code queries (tusserver.schema)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tests.conftest import new_postgres_database
from tusserver.database import downgrade, make_engine, migrate
from tusserver.schema import metadata

pytestmark = pytest.mark.anyio


def _diff(connection: sa.Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def _tables(connection: sa.Connection) -> set[str]:
    return set(sa.inspect(connection).get_table_names())


@pytest.fixture
def empty_database_url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return new_postgres_database()


async def test_upgrade_downgrade_upgrade_matches_schema(empty_database_url: str) -> None:
    engine = make_engine(empty_database_url)
    try:
        await migrate(engine)
        async with engine.connect() as connection:
            assert "upload" in await connection.run_sync(_tables)
            assert await connection.run_sync(_diff) == []
        await downgrade(engine, "base")
        async with engine.connect() as connection:
            assert await connection.run_sync(_tables) <= {"alembic_version"}
        await migrate(engine)
        await migrate(engine)  # idempotent: a second start-up changes nothing
        async with engine.connect() as connection:
            assert await connection.run_sync(_diff) == []
            version = await connection.scalar(sa.text("SELECT version_num FROM alembic_version"))
        assert version == "0003"
    finally:
        await engine.dispose()
