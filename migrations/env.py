"""Alembic environment: runs revisions on a connection the server hands in, or on its own.

`tusserver.database.migrate` passes an open connection in `config.attributes["connection"]`. From the
command line (`alembic upgrade head`), the URL comes from `sqlalchemy.url` or TUSSERVER_DATABASE_URL,
else the default SQLite file, and an async engine is made here.
"""

from __future__ import annotations

import asyncio

import sqlalchemy as sa
from alembic import context

from tusserver.config import Settings
from tusserver.database import make_engine
from tusserver.schema import metadata

config = context.config


def run_on(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_with_own_engine() -> None:
    url = config.get_main_option("sqlalchemy.url") or Settings.from_env().resolved_database_url
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_on)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")

shared_connection = config.attributes.get("connection")
if shared_connection is not None:
    run_on(shared_connection)
else:
    asyncio.run(run_with_own_engine())
