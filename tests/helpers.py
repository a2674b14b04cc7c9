"""Small request helpers shared by the protocol tests (in-process app through httpx)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import httpx
from sqlalchemy.engine import make_url

from tusserver.protocol import OFFSET_OCTET_STREAM

BASE = "/files/"
MiB = 1024 * 1024


async def create(client: httpx.AsyncClient, length: int | None = 12, **headers: str) -> str:
    """POST a new upload; returns its path (e.g. /files/abc...)."""
    sent = {"Upload-Length": str(length)} if length is not None else {"Upload-Defer-Length": "1"}
    sent.update({key.replace("_", "-"): value for key, value in headers.items()})
    response = await client.post(BASE, headers=sent)
    assert response.status_code == 201, response.text
    return httpx.URL(response.headers["Location"]).path


async def patch(
    client: httpx.AsyncClient, path: str, offset: int, body: bytes, **headers: str
) -> httpx.Response:
    sent = {"Content-Type": OFFSET_OCTET_STREAM, "Upload-Offset": str(offset)}
    sent.update({key.replace("_", "-"): value for key, value in headers.items()})
    return await client.patch(path, content=body, headers=sent)


async def offset_of(client: httpx.AsyncClient, path: str) -> int:
    response = await client.head(path)
    assert response.status_code == 200
    return int(response.headers["Upload-Offset"])


def stored_bytes(data_dir: Path, path: str) -> bytes:
    """What storage holds for a finished upload: its file, or its object when the server of
    `data_dir` stores in S3. An upload that never got a byte has no file: it holds b""."""
    from tests.s3server import stored_in_s3  # boto3 only where S3 is used

    upload_id = path.rsplit("/", 1)[1]
    in_s3 = stored_in_s3(data_dir, upload_id)
    if in_s3 is not None:
        return in_s3
    file = data_dir / "uploads" / upload_id
    return file.read_bytes() if file.exists() else b""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def random_file(path: Path, size: int) -> Path:
    """`size` random bytes in a new file, written a MiB at a time."""
    with path.open("wb") as file:
        for _ in range(size // MiB):
            file.write(os.urandom(MiB))
        file.write(os.urandom(size % MiB))
    return path


def stored_file(data_dir: Path, upload_url: str) -> Path:
    """Where the local storage keeps an upload's bytes, from its URL or path."""
    return data_dir / "uploads" / upload_url.rstrip("/").rsplit("/", 1)[1]


def raw_patch_head(port: int, path: str, offset: int, length: int, *extra: str) -> bytes:
    """The head of a PATCH for a raw socket (tests that stall, drop or half-send a body)."""
    lines = [
        f"PATCH {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Tus-Resumable: 1.0.0",
        f"Upload-Offset: {offset}",
        "Content-Type: application/offset+octet-stream",
        f"Content-Length: {length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def upload_ids(database_url: str) -> set[str]:
    """The IDs of every upload row in the database at `database_url` (SQLite or PostgreSQL), read
    apart from the server: "created nothing" is a row count, since a new upload has no file until
    its first byte. Callable from sync and async tests alike."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        with contextlib.closing(sqlite3.connect(str(url.database))) as connection:
            return {row[0] for row in connection.execute("SELECT id FROM upload")}
    with ThreadPoolExecutor(1) as thread:  # its own event loop, whether or not one runs here
        return thread.submit(asyncio.run, _postgres_upload_ids(database_url)).result()


async def _postgres_upload_ids(database_url: str) -> set[str]:
    plain = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(plain)
    try:
        return {row["id"] for row in await connection.fetch("SELECT id FROM upload")}
    finally:
        await connection.close()
