"""Database connections and schema migration.

Owns turning a database URL into a tuned async engine (SQLite in WAL mode with a busy timeout,
PostgreSQL through asyncpg) and bringing the schema to the newest Alembic revision. Knows nothing of
uploads.

Alembic is imported only when a migration has to run: a database already at `SCHEMA_HEAD` (every start
but the first after an upgrade) is recognised by reading `alembic_version` with one plain query. Alembic
with Mako and Pygments is about 11 MiB of resident memory that a serving process would otherwise keep
for nothing.
"""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

if TYPE_CHECKING:
    from alembic.config import Config

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
_ALIASES = {"postgres": "postgresql"}
# Any fixed number: instances starting together take turns migrating (PostgreSQL only; see migrate).
_MIGRATION_LOCK_KEY = 0x7475_7373
SCHEMA_HEAD = "0003"
"""The newest revision in `migrations/versions` (a test compares it with Alembic's head)."""


def async_url(url: str) -> URL:
    """`sqlite:///x.db` / `postgresql://...` -> the same URL with its async driver."""
    parsed = make_url(url)
    backend = _ALIASES.get(parsed.get_backend_name(), parsed.get_backend_name())
    if backend not in _ASYNC_DRIVERS:
        raise ValueError(f"unsupported database {backend!r}: use sqlite or postgresql")
    if "+" in parsed.drivername:
        return parsed
    return parsed.set(drivername=_ASYNC_DRIVERS[backend])


def make_engine(url: str, fsync: bool = False, timeout: float = 5.0) -> AsyncEngine:
    """An engine for `url` (migrations and start-up checks; requests use `records.py`'s runners);
    creates the directory of an SQLite file. With `fsync`, SQLite syncs every commit
    (`synchronous=FULL`) so that an acknowledged offset survives a power loss. Connecting to
    PostgreSQL gives up after `timeout` seconds; statements have no limit (a migration may be long,
    and instances starting together wait for each other's)."""
    parsed = async_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, "FULL" if fsync else "NORMAL")
    return create_async_engine(
        parsed, pool_size=2, pool_recycle=1800, pool_pre_ping=True, connect_args={"timeout": timeout}
    )


def _sqlite_engine(url: URL, synchronous: str) -> AsyncEngine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 30})
    # WAL lets readers run beside the one writer; NORMAL sync is durable across process crashes
    # (a power loss may drop the last transactions, never corrupt); FULL also across power loss;
    # wait for locks instead of failing.
    pragmas = ("journal_mode=WAL", f"synchronous={synchronous}", "busy_timeout=30000")

    def tune(dbapi_connection: Any, _record: object) -> None:
        cursor = dbapi_connection.cursor()
        for pragma in pragmas:
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    sa.event.listen(engine.sync_engine, "connect", tune)
    return engine


def alembic_config(url: str | None = None) -> Config:
    """Alembic configuration pointing at the revisions shipped with the package."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_migrations_directory()))
    if url is not None:
        config.set_main_option("sqlalchemy.url", str(async_url(url)).replace("%", "%%"))
    return config


def _migrations_directory() -> Path:
    """The installed `tusserver.migrations`, or `migrations/` beside the package in a bare checkout."""
    try:
        return Path(str(resources.files("tusserver.migrations")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "migrations"


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade the schema to `revision` inside one transaction; processes starting together take
    turns (an advisory lock on PostgreSQL, a file lock beside an SQLite database). A database already
    at `SCHEMA_HEAD` is left alone without loading Alembic."""
    if revision == "head" and await schema_revision(engine) == SCHEMA_HEAD:
        return
    database = engine.url.database
    if engine.dialect.name == "sqlite" and database and database != ":memory:":
        async with _file_lock(Path(database + ".migrate-lock")):
            await _migrate(engine, revision)
    else:
        await _migrate(engine, revision)


async def schema_revision(engine: AsyncEngine) -> str | None:
    """The revision recorded in `alembic_version`, or None for a database never migrated."""
    async with engine.connect() as connection:
        has_table = await connection.run_sync(lambda sync: sa.inspect(sync).has_table("alembic_version"))
        if not has_table:
            return None
        rows = (await connection.execute(sa.text("SELECT version_num FROM alembic_version"))).all()
    return str(rows[0][0]) if len(rows) == 1 else None


@asynccontextmanager
async def _file_lock(path: Path) -> AsyncIterator[None]:
    handle = await asyncio.to_thread(path.open, "a")
    try:
        await asyncio.to_thread(fcntl.flock, handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # closing releases the lock


async def _migrate(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            await connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
            )
        await connection.run_sync(_run_alembic, "upgrade", revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Downgrade the schema to `revision` (used by tests and by `tusserver migrate --revision`)."""
    async with engine.begin() as connection:
        await connection.run_sync(_run_alembic, "downgrade", revision)


def _run_alembic(connection: sa.Connection, direction: str, revision: str) -> None:
    from alembic import command

    config = alembic_config()
    config.attributes["connection"] = connection
    if direction == "upgrade":
        command.upgrade(config, revision)
    else:
        command.downgrade(config, revision)
