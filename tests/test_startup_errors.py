"""Start-up problems print one clear line and exit non-zero, without a traceback (issue 8, point 8):
an unreachable database, a wrong password, a data directory that cannot be used, a port in use, a
schema newer than this release, an SQLite library too old for our SQL."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from uvicorn.config import STARTUP_FAILURE

from tests.pgcluster import PostgresCluster
from tests.servers import REPO_ROOT, free_port
from tusserver.config import Settings
from tusserver.preflight import StartupProblem, check_database, check_port
from tusserver.workers import SpreadingConfig, _own_socket


def _serve(*flags: str, timeout: float = 60) -> tuple[int, str]:
    command = [sys.executable, "-m", "tusserver", "serve", "--host", "127.0.0.1", *flags]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def _one_clear_line(output: str) -> str:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.startswith("tusserver: ")]
    assert len(lines) == 1, output
    return lines[0]


def test_unreachable_database(tmp_path: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/tus"
    code, output = _serve("--port", str(free_port()), "--data-dir", str(tmp_path), "--database-url", url)
    assert code != 0
    assert "cannot reach the database at 127.0.0.1:" in _one_clear_line(output)


def test_blackholed_database_gives_up_within_the_timeout(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:  # accepts, never answers
        url = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/tus"
        flags = ["--port", str(free_port()), "--data-dir", str(tmp_path), "--database-url", url]
        code, output = _serve(*flags, "--database-timeout", "1", timeout=30)
    assert code != 0
    assert "did not answer within 1 s" in _one_clear_line(output)


@pytest.fixture(scope="module")
def guarded_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster(password="right-password")
    cluster.start()
    yield cluster
    cluster.remove()


@pytest.mark.postgresql
def test_wrong_password(tmp_path: Path, guarded_cluster: PostgresCluster) -> None:
    url = guarded_cluster.url.replace("right-password", "wrong-password")
    code, output = _serve("--port", str(free_port()), "--data-dir", str(tmp_path), "--database-url", url)
    assert code != 0
    line = _one_clear_line(output)
    assert "refused the password of user 'postgres'" in line
    assert "wrong-password" not in output  # never echo a secret


@pytest.mark.postgresql
def test_missing_database(tmp_path: Path, guarded_cluster: PostgresCluster) -> None:
    url = guarded_cluster.url.rsplit("/", 1)[0] + "/nonexistent"
    code, output = _serve("--port", str(free_port()), "--data-dir", str(tmp_path), "--database-url", url)
    assert code != 0
    assert "database 'nonexistent' does not exist" in _one_clear_line(output)


def test_unusable_data_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, output = _serve("--port", str(free_port()), "--data-dir", str(blocker / "data"))
    assert code != 0
    assert "data directory" in _one_clear_line(output)
    assert "Not a directory" in output


def test_port_in_use(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, output = _serve("--port", str(port), "--data-dir", str(tmp_path))
    assert code != 0
    assert f"port {port} on 127.0.0.1 is already in use" in _one_clear_line(output)


def test_schema_newer_than_this_release(tmp_path: Path) -> None:
    migrated = subprocess.run(
        [sys.executable, "-m", "tusserver", "migrate", "--data-dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert migrated.returncode == 0
    with sqlite3.connect(tmp_path / "tusserver.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = 'f00dfeedbeef'")  # a later release's
    code, output = _serve("--port", str(free_port()), "--data-dir", str(tmp_path))
    assert code != 0
    assert "the database schema is newer than this release" in _one_clear_line(output)
    migrate = subprocess.run(
        [sys.executable, "-m", "tusserver", "migrate", "--data-dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert migrate.returncode != 0
    assert "newer than this release" in _one_clear_line(migrate.stdout + migrate.stderr)


def test_sqlite_library_too_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No older SQLite can be installed here, so the version the library reports is replaced."""
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    settings = Settings(data_dir=tmp_path)
    with pytest.raises(StartupProblem, match=r"SQLite 3\.31\.1 is too old: tusserver needs 3\.35\.0"):
        asyncio.run(check_database(settings))
    assert not sa.inspect(sa.create_engine(f"sqlite:///{tmp_path / 'tusserver.db'}")).get_table_names()


def test_a_port_taken_after_the_check_stops_the_workers_supervisor_with_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`--workers` binds its own supervisor socket (`workers.py`): a port taken between the start-up
    check and that bind ends the start with uvicorn's one error line and its start-up failure code."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config = SpreadingConfig("tusserver.app:app_from_env", host="127.0.0.1", port=port, log_config=None)
        with pytest.raises(SystemExit) as stopped:
            config.bind_socket()
    assert stopped.value.code == STARTUP_FAILURE
    assert [record.getMessage() for record in caplog.records] == ["[Errno 98] Address already in use"]


def test_the_workers_supervisor_keeps_the_port_for_its_workers_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The supervisor's socket lets the workers bind (SO_REUSEPORT) but no other program (no
    SO_REUSEADDR); a worker that still cannot bind exits as a start-up failure, with one line."""
    config = SpreadingConfig("tusserver.app:app_from_env", host="127.0.0.1", port=0, log_config=None)
    with config.bind_socket() as supervisor:
        address = supervisor.getsockname()
        with pytest.raises(OSError, match="in use"):
            socket.create_server(address)  # sets SO_REUSEADDR, as most servers do
        with _own_socket(socket.AF_INET, address) as worker:
            worker.listen()
    with socket.create_server(("127.0.0.1", 0)) as foreign, pytest.raises(SystemExit) as stopped:
        _own_socket(socket.AF_INET, foreign.getsockname())
    assert stopped.value.code == STARTUP_FAILURE
    assert _one_clear_line(capsys.readouterr().err).startswith(
        "tusserver: a worker cannot listen on 127.0.0.1:"
    )


def test_the_port_check_speaks_ipv6() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        taken = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = taken.getsockname()[1]
    with taken, pytest.raises(StartupProblem, match="already in use"):
        check_port("::1", port)
    check_port("::1", port)  # free again


def test_workers_that_cannot_start_stop_the_server_with_uvicorns_start_up_failure_code() -> None:
    """Real worker processes whose app fails at start-up: uvicorn's supervisor stops instead of
    restarting them, and `run_workers` ends with exit code 3, not 0."""
    program = (
        "from tusserver.workers import run_workers; "
        "run_workers('tests.failing_lifespan_app:app', host='127.0.0.1', port=0, workers=2, log_config=None)"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == STARTUP_FAILURE, done.stderr
