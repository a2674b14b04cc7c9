"""Real faults for the write-path tests: a small file system of its own, a lease stolen in the
database, a raw PATCH or POST that sends part of its body and waits, and reading a row directly."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tusserver.core import Upload
from tusserver.database import make_engine
from tusserver.records import UploadRecords
from tusserver.schema import db_deadline, upload_table


@contextlib.contextmanager
def small_disk(path: Path, size_mib: int) -> Iterator[Path]:
    """A tmpfs of `size_mib` MiB mounted at `path` (needs root, as CI has): a disk that fills up."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _run_in_database(database_url: str, statement: sa.Executable) -> None:
    async def run() -> None:
        engine = make_engine(database_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(statement)
        finally:
            await engine.dispose()

    asyncio.run(run())


def steal_lease(database_url: str, upload_id: str, ttl: float = 60.0) -> None:
    """What another instance's takeover leaves in the row: a live lease that is not ours."""
    _run_in_database(
        database_url,
        sa.update(upload_table)
        .where(upload_table.c.id == upload_id)
        .values(lock_owner="thief:1:x", lock_expires_at=db_deadline(ttl), release_requested=False),
    )


def release_lease(database_url: str, upload_id: str) -> None:
    _run_in_database(
        database_url,
        sa.update(upload_table)
        .where(upload_table.c.id == upload_id)
        .values(lock_owner=None, lock_expires_at=None),
    )


def age_row(database_url: str, upload_id: str, seconds: float) -> None:
    """Make the upload look created `seconds` ago."""
    created = stored_row(database_url, upload_id).created_at - timedelta(seconds=seconds)
    _run_in_database(
        database_url,
        sa.update(upload_table).where(upload_table.c.id == upload_id).values(created_at=created),
    )


def stored_row(database_url: str, upload_id: str) -> Upload:
    """The upload as committed, read straight from the database (no lease is waited for)."""

    async def read() -> Upload:
        engine = make_engine(database_url)
        records = UploadRecords(engine)
        try:
            return await records.get(upload_id)
        finally:
            await records.close()
            await engine.dispose()

    return asyncio.run(read())


def raw_request_head(port: int, method: str, path: str, length: int, *headers: str) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Tus-Resumable: 1.0.0",
        "Content-Type: application/offset+octet-stream",
        f"Content-Length: {length}",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer_of(connection: socket.socket, timeout: float = 15.0) -> str:
    """The response head (and short body) a raw connection receives."""
    connection.settimeout(timeout)
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while b"\r\n\r\n" not in data:
            piece = connection.recv(65536)
            if not piece:
                break
            data += piece
    return data.decode("latin-1")


def header(answer: str, name: str) -> str | None:
    for line in answer.split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def keyed(**values: Any) -> dict[str, str]:
    return {key.replace("_", "-"): str(value) for key, value in values.items()}
