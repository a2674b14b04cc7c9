"""A real S3-compatible server for the tests: moto in server mode (`moto_server`) on a loopback port,
as its own process, plus helpers to make buckets and read what they hold.

moto keeps everything in memory and enforces S3's rules that matter here (5 MiB minimum part size at
completion, part ETags, UploadPartCopy ranges). Credentials are dummies, exported to this process
and the servers it starts through the standard AWS environment variables.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3

from tests.servers import free_port, wait_for_port
from tusserver import Settings

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class MotoServer:
    """`moto_server` on 127.0.0.1; stopped by `stop` (only the process this started)."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [binary, "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=log,
                env={**os.environ, **CREDENTIALS},
            )
        wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def client(self, endpoint: str | None = None) -> Any:
        """A plain (blocking) boto3 client, for tests to look into the bucket."""
        return boto3.client("s3", endpoint_url=endpoint or self.url, **_boto_credentials())

    def new_bucket(self) -> str:
        name = f"tus-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": CREDENTIALS["AWS_DEFAULT_REGION"],
    }


def keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    """Every object key in the bucket under `prefix`."""
    found: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.extend(item["Key"] for item in page.get("Contents", []))
    return found


def multipart_uploads(client: Any, bucket: str) -> list[str]:
    """Keys of the multipart uploads in progress in the bucket."""
    return [item["Key"] for item in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def object_bytes(client: Any, bucket: str, key: str) -> bytes:
    data: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return data


@contextlib.contextmanager
def use_credentials() -> Iterator[None]:
    """Export the dummy credentials for the duration of a fixture (in-process servers read them)."""
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


LOCATION_FILE = "s3-location.json"
"""Written into a test's data directory when its server stores in S3: where `stored_bytes` looks."""


def remember_s3_location(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    location = {
        "endpoint": settings.s3_endpoint_url,
        "bucket": settings.s3_bucket,
        "prefix": settings.s3_prefix,
    }
    (settings.data_dir / LOCATION_FILE).write_text(json.dumps(location))


def stored_in_s3(data_dir: Path, upload_id: str) -> bytes | None:
    """The finished object of an upload whose server stored in S3; None for local storage."""
    marker = data_dir / LOCATION_FILE
    if not marker.exists():
        return None
    location = json.loads(marker.read_text())
    prefix = location["prefix"].strip("/")
    key = f"{prefix}/{upload_id}" if prefix else upload_id
    client = boto3.client("s3", endpoint_url=location["endpoint"], **_boto_credentials())
    return object_bytes(client, location["bucket"], key)
