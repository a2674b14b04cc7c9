"""Shared fixtures: the database each test runs against, the app behind httpx, a real uvicorn process.

`--database sqlite|postgresql|all` (default all) chooses the backends; every test that takes the
`database_url` fixture runs once per backend. PostgreSQL is the server at TUSSERVER_TEST_POSTGRES_URL
(default postgresql://postgres@127.0.0.1:5432/postgres): a fresh database is created for the session
and dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.pgcluster import PostgresCluster
from tests.s3server import MotoServer, remember_s3_location, use_credentials
from tests.servers import ServerProcess
from tusserver import Settings, create_app
from tusserver.protocol import TUS_RESUMABLE, TUS_VERSION

POSTGRES_ADMIN_URL = os.environ.get(
    "TUSSERVER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ("sqlite", "postgresql")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--database",
        choices=[*BACKENDS, "all"],
        default="all",
        help="database backend(s) to run the suite against (default: all)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgresql: needs PostgreSQL whatever --database says")
    config.addinivalue_line(
        "markers", "local_storage: looks into the data directory, so runs with local storage only"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With --database sqlite, tests that exist only for PostgreSQL are deselected (not skipped)."""
    if config.getoption("--database") != "sqlite":
        return
    kept = [item for item in items if item.get_closest_marker("postgresql") is None]
    deselected = [item for item in items if item.get_closest_marker("postgresql") is not None]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


S3_PROTOCOL_MODULES = {
    "tests.test_core",
    "tests.test_creation",
    "tests.test_defer_length",
    "tests.test_checksum",
    "tests.test_concatenation",
    "tests.test_termination",
    "tests.test_download",
}
"""Protocol suites whose `settings` tests also run against S3 storage (moto)."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("--database")
        backends = BACKENDS if chosen == "all" else (chosen,)
        metafunc.parametrize("backend", backends, scope="session")
    if (
        "storage_kind" in metafunc.fixturenames
        and metafunc.module.__name__ in S3_PROTOCOL_MODULES
        and metafunc.definition.get_closest_marker("local_storage") is None
    ):
        metafunc.parametrize("storage_kind", ["local", "s3"])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _recreate_database(name: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def _drop_database(name: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test session; its URL."""
    name = f"tusserver_test_{os.getpid()}_{secrets.token_hex(3)}"
    asyncio.run(_recreate_database(name))
    yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_drop_database(name))


_MADE_DATABASES: list[str] = []


def new_postgres_database() -> str:
    """Another fresh database (for tests that need a schema of their own); dropped when the test
    session ends (`_drop_made_databases`)."""
    name = f"tusserver_test_{os.getpid()}_{secrets.token_hex(3)}"
    asyncio.run(_recreate_database(name))
    _MADE_DATABASES.append(name)
    return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session", autouse=True)
def _drop_made_databases() -> Iterator[None]:
    """Drop the databases `new_postgres_database` made, once every test is done with them."""
    yield
    for name in _MADE_DATABASES:
        asyncio.run(_drop_database(name))
    _MADE_DATABASES.clear()


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'tusserver.db'}"
        return
    url: str = request.getfixturevalue("postgres_database")
    yield url
    asyncio.run(_forget_hook_events(url))  # the session's database is shared: no event outlives its test


async def _forget_hook_events(url: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(
            "DO $$ BEGIN DELETE FROM hook_event; EXCEPTION WHEN undefined_table THEN END $$"
        )
    finally:
        await connection.close()


@pytest.fixture
def storage_kind() -> str:
    """`local`, or `s3` in the protocol suites that run against both (`S3_PROTOCOL_MODULES`)."""
    return "local"


@pytest.fixture
def settings(
    tmp_path: Path, database_url: str, storage_kind: str, request: pytest.FixtureRequest
) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, lock_timeout=2.0)
    if storage_kind == "s3":
        server: MotoServer = request.getfixturevalue("s3_server")
        settings = s3_settings(settings, server, request.getfixturevalue("s3_bucket"))
    return settings


def s3_settings(settings: Settings, server: MotoServer, bucket: str) -> Settings:
    """`settings` with S3 storage in `bucket` (5 MiB parts); `tests.helpers.stored_bytes` follows."""
    settings = replace(
        settings,
        storage="s3",
        s3_bucket=bucket,
        s3_prefix="tus",
        s3_endpoint_url=server.url,
        s3_region="us-east-1",
        s3_part_size=5 * 1024 * 1024,
    )
    remember_s3_location(settings)
    return settings


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to the app in-process (lifespan run), Tus-Resumable preset."""
    async with app_client(settings) as http:
        yield http


def app_client(settings: Settings) -> AppClient:
    return AppClient(settings)


class AppClient:
    """`async with AppClient(settings) as http`: the app's lifespan plus an httpx client on it."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)

    async def __aenter__(self) -> httpx.AsyncClient:
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        self._http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://testserver",
            headers={TUS_RESUMABLE: TUS_VERSION},
        )
        return self._http

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()
        await self._lifespan.__aexit__(None, None, None)


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL cluster of the test's own, started (tests stop and start it under a server)."""
    cluster = PostgresCluster()
    cluster.start()
    yield cluster
    cluster.remove()


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[ServerProcess]:
    """A real `tusserver serve` process on a loopback port, stopped after the test."""
    process = ServerProcess(data_dir=tmp_path / "data", database_url=database_url)
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto S3 server for the session (its own process on a loopback port), with the dummy
    credentials exported while it runs."""
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    with use_credentials():
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def s3_bucket(s3_server: MotoServer) -> str:
    """A new, empty bucket of the session's S3 server."""
    return s3_server.new_bucket()
