"""POST + HEAD cycles through the ASGI app in this process, without HTTP: the app's own cost per small
request, steady enough to compare two versions of the code under `callgrind`.

    python bench/inprocess.py --cycles 2000                 # wall time per cycle (noisy on a VM)
    valgrind --tool=callgrind python bench/inprocess.py --cycles 400
    valgrind --tool=callgrind python bench/inprocess.py --cycles 2000
    # instructions per cycle: (the second run's total - the first's) / 1,600

`--without records` answers the upload rows from a dict instead of the database, `--without handlers`
answers POST and HEAD with constants (as `floor_server.py` does): the differences between the three
split a cycle into the steps around the handlers, the handlers and upload service, and the database
layer. Each run uses a new temporary data directory (SQLite, removed at the end);
`PYTHONHASHSEED=0` keeps runs alike.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from floor_server import use_constant_handlers

from tusserver.app import create_app
from tusserver.config import Settings
from tusserver.core import Upload
from tusserver.errors import UploadNotFound
from tusserver.records import UploadRecords

METADATA = b"filename ZmlsZS5iaW4=,filetype YXBwbGljYXRpb24vb2N0ZXQtc3RyZWFt"
POST_HEADERS = [
    (b"host", b"127.0.0.1:8080"),
    (b"tus-resumable", b"1.0.0"),
    (b"upload-length", b"1024"),
    (b"upload-metadata", METADATA),
    (b"content-length", b"0"),
]
HEAD_HEADERS = [(b"host", b"127.0.0.1:8080"), (b"tus-resumable", b"1.0.0")]
Message = dict[str, Any]


def _scope(method: str, path: str, headers: list[tuple[bytes, bytes]]) -> Message:
    return {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 50000), "scheme": "http",
        "root_path": "", "headers": headers, "state": {}, "method": method, "path": path,
        "raw_path": path.encode(), "query_string": b"",
    }  # fmt: skip


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _call(app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> Message:
    started: Message = {}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            started.update(message)

    await app(_scope(method, path, headers), _no_body, send)
    return started


async def _cycles(app: Any, count: int) -> None:
    for _ in range(count):
        created = await _call(app, "POST", "/files/", POST_HEADERS)
        if created.get("status") != 201:
            raise RuntimeError(f"POST answered {created.get('status')}")
        location = dict(created["headers"])[b"location"].decode()
        path = "/files/" + location.rsplit("/", 1)[1]
        status = await _call(app, "HEAD", path, HEAD_HEADERS)
        if status.get("status") != 200:
            raise RuntimeError(f"HEAD answered {status.get('status')}")


async def _run(data_dir: Path, cycles: int, concurrency: int, warm: int) -> float:
    app: Any = create_app(Settings(data_dir=data_dir, cleanup_interval=0))
    started, stopping = asyncio.Event(), asyncio.Event()

    async def receive() -> Message:
        if started.is_set():
            await stopping.wait()
            return {"type": "lifespan.shutdown"}
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()

    lifespan_scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    lifespan = asyncio.create_task(app(lifespan_scope, receive, send))
    await started.wait()
    await asyncio.gather(*(_cycles(app, warm // concurrency) for _ in range(concurrency)))
    begun = time.perf_counter()
    await asyncio.gather(*(_cycles(app, cycles // concurrency) for _ in range(concurrency)))
    elapsed = time.perf_counter() - begun
    stopping.set()
    await lifespan
    return elapsed


def _without_records() -> None:
    """Upload rows in a dict: what the database layer costs is left out."""
    _replaceable(UploadRecords, "add", "get_with_lock")
    rows: dict[str, Upload] = {}

    async def add(self: UploadRecords, upload: Upload, *args: Any, **kwargs: Any) -> None:
        rows[upload.id] = upload

    async def get_with_lock(self: UploadRecords, upload_id: str) -> tuple[Upload, bool]:
        if upload_id not in rows:
            raise UploadNotFound(upload_id)
        return rows[upload_id], False

    UploadRecords.add = add  # type: ignore[method-assign]
    UploadRecords.get_with_lock = get_with_lock  # type: ignore[method-assign]


def _replaceable(owner: object, *names: str) -> None:
    """Refuse to run if what is replaced is gone: the layer would silently stay in."""
    missing = [name for name in names if not hasattr(owner, name)]
    if missing:
        raise SystemExit(f"inprocess.py: {owner!r} has no {', '.join(missing)}; update this tool")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--cycles", type=int, default=2000, help="timed POST + HEAD cycles (default 2000)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent loops (default 16)")
    parser.add_argument("--warm", type=int, default=200, help="untimed cycles first (default 200)")
    parser.add_argument("--without", choices=("records", "handlers"), help="leave out a layer (see above)")
    args = parser.parse_args()
    if args.without == "records":
        _without_records()
    elif args.without == "handlers":
        use_constant_handlers()
    with tempfile.TemporaryDirectory(prefix="tusserver-inprocess-") as directory:
        elapsed = asyncio.run(_run(Path(directory), args.cycles, args.concurrency, args.warm))
    print(f"{args.cycles} cycles: {elapsed / args.cycles * 1e3:.4f} ms a cycle", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
