"""S3 storage next to local storage, with the S3 server's own multipart throughput as the ceiling.

Starts `moto_server` (an S3-compatible server, in memory) on a free loopback port, then measures:

- the ceiling: plain multipart uploads straight to that server with aiobotocore, 8 MiB parts,
  W1 = one upload of the W1 size, W2 = 32 concurrent uploads of the W2 size;
- `bench.py` (W1 = scenario a, W2 = scenario b) with `--storage s3` against the same server, and
  with local storage,

and prints MiB/s for each with the ratio of tusserver on S3 to the ceiling. Run from the
repository root:

    python bench/s3.py --quick
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiobotocore.session import get_session

MiB = 1024 * 1024
PART = 8 * MiB
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_moto(port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    process = subprocess.Popen(
        [binary, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **CREDENTIALS},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("moto_server did not start")


async def multipart(client: Any, bucket: str, size: int, body: bytes) -> None:
    key = secrets.token_hex(8)
    created = await client.create_multipart_upload(Bucket=bucket, Key=key)
    parts = []
    for number, start in enumerate(range(0, size, PART), 1):
        length = min(PART, size - start)
        answer = await client.upload_part(
            Bucket=bucket, Key=key, UploadId=created["UploadId"], PartNumber=number, Body=body[:length]
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
    await client.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=created["UploadId"], MultipartUpload={"Parts": parts}
    )
    await client.delete_object(Bucket=bucket, Key=key)


async def ceiling(endpoint: str, bucket: str, w1: int, w2: int, w2_count: int) -> tuple[float, float]:
    body = os.urandom(PART)
    session = get_session()
    async with session.create_client("s3", endpoint_url=endpoint, region_name="us-east-1") as client:
        await client.create_bucket(Bucket=bucket)
        await multipart(client, bucket, 16 * MiB, body)  # warm-up
        started = time.perf_counter()
        await multipart(client, bucket, w1, body)
        single = w1 / MiB / (time.perf_counter() - started)
        started = time.perf_counter()
        await asyncio.gather(*(multipart(client, bucket, w2, body) for _ in range(w2_count)))
        concurrent = w2 * w2_count / MiB / (time.perf_counter() - started)
    return single, concurrent


def bench(quick: bool, env: Sequence[str]) -> tuple[float, float]:
    """bench.py's scenario a (W1) and b (W2) throughput in MiB/s."""
    command = [sys.executable, "bench/bench.py", *(["--quick"] if quick else [])]
    for item in env:
        command += ["--server-env", item]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **CREDENTIALS}
    )
    if done.returncode != 0:
        raise SystemExit(f"bench.py failed:\n{done.stdout}\n{done.stderr}")
    figures = []
    for line in done.stdout.splitlines():
        columns = re.split(r"\s{2,}", line.strip())  # bench.py's table: columns two spaces apart
        if columns[0][:2] in {"a)", "b)"} and len(columns) > 1:
            figures.append(float(columns[1]))
    if len(figures) < 2:
        raise SystemExit(f"could not read bench.py's table:\n{done.stdout}")
    return figures[0], figures[1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="bench.py --quick sizes")
    args = parser.parse_args(argv)
    w1, w2 = (256 * MiB, 8 * MiB) if args.quick else (1024 * MiB, 32 * MiB)
    port = free_port()
    moto = start_moto(port)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        top1, top2 = asyncio.run(ceiling(endpoint, "ceiling", w1, w2, 32))
        bucket = "bench-" + secrets.token_hex(4)
        asyncio.run(_make_bucket(endpoint, bucket))
        s3_env = [
            f"TUSSERVER_STORAGE=s3://{bucket}/tus", f"TUSSERVER_S3_ENDPOINT_URL={endpoint}",
            "TUSSERVER_S3_REGION=us-east-1",
        ]  # fmt: skip
        s3_1, s3_2 = bench(args.quick, s3_env)
        local_1, local_2 = bench(args.quick, [])
    finally:
        moto.terminate()
        moto.wait(timeout=10)
    rows = [
        ("", "W1 MiB/s", "W2 MiB/s"),
        ("moto multipart (ceiling)", f"{top1:.0f}", f"{top2:.0f}"),
        ("tusserver, S3 (moto)", f"{s3_1:.0f}", f"{s3_2:.0f}"),
        ("tusserver, local", f"{local_1:.0f}", f"{local_2:.0f}"),
        ("S3 / ceiling", f"{s3_1 / top1:.2f}", f"{s3_2 / top2:.2f}"),
    ]
    for row in rows:
        print(f"{row[0]:<28}{row[1]:>10}{row[2]:>10}")
    return 0


async def _make_bucket(endpoint: str, bucket: str) -> None:
    async with get_session().create_client("s3", endpoint_url=endpoint, region_name="us-east-1") as client:
        await client.create_bucket(Bucket=bucket)


if __name__ == "__main__":
    os.environ.update(CREDENTIALS)
    sys.exit(main())
