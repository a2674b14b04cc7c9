"""Settings from the environment and the command line; `tusserver --help` and `migrate`."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.servers import REPO_ROOT
from tusserver.cli import build_parser, settings_from
from tusserver.config import Settings, parse_byte_size
from tusserver.database import async_url


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1048576),
        ("512M", 512 * 1024**2),
        ("10G", 10 * 1024**3),
        ("2GiB", 2 * 1024**3),
        ("1k", 1024),
    ],
)
def test_byte_sizes(text: str, size: int) -> None:
    assert parse_byte_size(text) == size


def test_bad_byte_size() -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_byte_size("ten gigs")


def test_defaults_are_the_embedded_setup() -> None:
    settings = Settings.from_env({})
    assert (settings.host, settings.port, settings.base_path) == ("127.0.0.1", 1080, "/files/")
    assert settings.data_dir == Path("data")
    assert settings.resolved_database_url == "sqlite:///data/tusserver.db"
    assert settings.max_size is None


def test_the_readme_lists_every_serve_flag_with_its_environment_variable() -> None:
    """Each `serve` option is a row of the README's table with its `TUSSERVER_*` twin (which
    `Settings.from_env` reads), and each row of that table is a real option."""
    serve = next(
        action.choices["serve"]
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    flags = {
        option: action.dest
        for action in serve._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }
    readme = (REPO_ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(--[a-z0-9-]+)` \| `(TUSSERVER_[A-Z0-9_]+)` \|", readme, re.MULTILINE))
    assert set(rows) == set(flags)
    for option, dest in flags.items():
        assert rows[option] == "TUSSERVER_" + dest.upper(), option
    every = Settings().to_env()
    assert {rows[option] for option in flags} <= set(every)
    assert Settings.from_env(every) == Settings()


def test_every_flag_has_an_environment_twin() -> None:
    env = {
        "TUSSERVER_HOST": "0.0.0.0",
        "TUSSERVER_PORT": "8080",
        "TUSSERVER_BASE_PATH": "uploads",
        "TUSSERVER_DATA_DIR": "/srv/tus",
        "TUSSERVER_DATABASE_URL": "postgresql://db/tus",
        "TUSSERVER_MAX_SIZE": "1G",
        "TUSSERVER_ON_FINISH": "app.hooks:done",
        "TUSSERVER_WEBHOOK_URL": "http://hooks/finish",
        "TUSSERVER_LOG_LEVEL": "debug",
    }
    settings = Settings.from_env(env)
    assert settings == Settings(
        host="0.0.0.0",
        port=8080,
        base_path="/uploads/",
        data_dir=Path("/srv/tus"),
        database_url="postgresql://db/tus",
        max_size=1024**3,
        on_finish="app.hooks:done",
        webhook_url="http://hooks/finish",
        log_level="debug",
    )
    flags = [
        "serve", "--host", "0.0.0.0", "--port", "8080", "--base-path", "uploads", "--data-dir", "/srv/tus",
        "--database-url", "postgresql://db/tus", "--max-size", "1G", "--on-finish", "app.hooks:done",
        "--webhook-url", "http://hooks/finish", "--log-level", "debug",
    ]  # fmt: skip
    assert settings_from(build_parser().parse_args(flags)) == settings


def test_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUSSERVER_PORT", "9000")
    monkeypatch.setenv("TUSSERVER_MAX_SIZE", "5M")
    settings = settings_from(build_parser().parse_args(["serve", "--port", "9001"]))
    assert (settings.port, settings.max_size) == (9001, 5 * 1024**2)


def test_database_urls_get_async_drivers() -> None:
    assert async_url("sqlite:///x.db").drivername == "sqlite+aiosqlite"
    assert async_url("postgresql://u@h/db").drivername == "postgresql+asyncpg"
    assert async_url("postgres://u@h/db").drivername == "postgresql+asyncpg"
    with pytest.raises(ValueError, match="unsupported database"):
        async_url("mysql://u@h/db")


def run_cli(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tusserver", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_help_reads_well() -> None:
    top = run_cli("--help")
    assert top.returncode == 0
    assert "serve" in top.stdout
    assert "migrate" in top.stdout
    serve = run_cli("serve", "--help")
    assert serve.returncode == 0
    for flag in ["--host", "--port", "--base-path", "--data-dir", "--database-url", "--max-size",
                 "--on-finish", "--webhook-url", "--log-level", "TUSSERVER_MAX_SIZE"]:  # fmt: skip
        assert flag in serve.stdout


def test_bad_setting_is_a_clear_error() -> None:
    result = run_cli("serve", "--max-size", "lots")
    assert result.returncode == 2
    assert "not a size" in result.stderr


def test_migrate_command_creates_the_schema(tmp_path: Path) -> None:
    result = run_cli("migrate", "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "d" / "tusserver.db").exists()
    down = run_cli("migrate", "--data-dir", str(tmp_path / "d"), "--downgrade", "--revision", "base")
    assert down.returncode == 0, down.stderr


def test_serve_with_no_options_uses_sqlite_and_data_on_port_1080(tmp_path: Path) -> None:
    """The README's promise: `tusserver serve` alone works, with everything in ./data."""
    import os
    import signal
    import socket

    import httpx

    from tests.servers import wait_for_port

    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", 1080)) != 0, "port 1080 is taken; this test needs it free"
    env = {key: value for key, value in os.environ.items() if not key.startswith("TUSSERVER_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    process = subprocess.Popen(
        [sys.executable, "-m", "tusserver", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(1080, process)
        headers = {"Tus-Resumable": "1.0.0"}
        created = httpx.post("http://127.0.0.1:1080/files/", headers={**headers, "Upload-Length": "2"})
        assert created.status_code == 201
        patched = httpx.patch(
            created.headers["Location"],
            content=b"ok",
            headers={**headers, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
        )
        assert patched.status_code == 204
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    upload_id = created.headers["Location"].rsplit("/", 1)[1]
    assert (tmp_path / "data" / "uploads" / upload_id).read_bytes() == b"ok"
    assert (tmp_path / "data" / "tusserver.db").exists()
