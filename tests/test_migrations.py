"""Schema migrations: the database is built only by Alembic, every revision downgrades, and the
result matches the tables the code queries (tusserver.schema)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from tests.conftest import new_postgres_database
from tests.servers import REPO_ROOT, free_port
from tusserver.database import (
    SCHEMA_HEAD,
    alembic_config,
    downgrade,
    make_engine,
    migrate,
    schema_revision,
)
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


def test_schema_head_names_the_newest_revision() -> None:
    """`SCHEMA_HEAD` lets a start-up skip Alembic on a database already at it: it must be the head."""
    assert ScriptDirectory.from_config(alembic_config()).get_current_head() == SCHEMA_HEAD


_SERVE_CHECKS = """
import sys
from pathlib import Path
from tusserver.config import Settings
from tusserver.preflight import run_checks
run_checks(Settings(data_dir=Path(sys.argv[1]), database_url=sys.argv[2] or None, port=int(sys.argv[3])))
print(" ".join(sorted(name for name in ("alembic", "mako", "pygments") if name in sys.modules)) or "-")
"""


def test_start_up_migrates_in_a_child_and_never_loads_alembic(
    empty_database_url: str, backend: str, tmp_path: Path
) -> None:
    """`serve`'s checks migrate a new database in a forked child, and a later start only reads the
    revision: the serving process never holds Alembic (about 11 MiB resident)."""
    url = "" if backend == "sqlite" else empty_database_url
    data = tmp_path / "data"
    for _ in range(2):  # the first start migrates, the second finds the head
        done = subprocess.run(
            [sys.executable, "-c", _SERVE_CHECKS, str(data), url, str(free_port())],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["-"]
    assert asyncio.run(_revision(url or f"sqlite:///{data / 'tusserver.db'}")) == SCHEMA_HEAD


async def _revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        return await schema_revision(engine)
    finally:
        await engine.dispose()
