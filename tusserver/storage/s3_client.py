"""Talking to an S3-compatible service: the aiobotocore client, its retry and checksum configuration,
where an upload's objects live in the bucket, and the one translation of S3 failures into answers.

Layout under the prefix: `<prefix><upload_id>` is the finished object (a multipart upload while it is
being written); `<prefix><upload_id>.tail-<random>` holds the bytes that do not fill a part yet. Every
object of an upload starts with `<prefix><upload_id>` (IDs have a fixed length), so one listing finds
them all.

Retries: botocore's `standard` mode retries 5xx, throttling, timeouts and cut connections with
exponential backoff and jitter, 5 attempts (`AWS_MAX_ATTEMPTS` and `AWS_RETRY_MODE` change them);
what still fails becomes `StorageUnavailable` (503 + Retry-After), and a missing object or
multipart upload becomes `UploadDataLost` (410). Request checksums are computed
only when an operation requires them (`when_required`), which MinIO, R2 and B2 accept.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from tusserver.core import is_upload_id
from tusserver.errors import StorageUnavailable, TusError, UploadDataLost

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * 1024**4
"""S3's largest object (5 TiB): the length a deferred-length upload must be able to reach."""
MAX_COPY_PART = 5 * 1024**3
"""The largest range one `UploadPartCopy` may copy."""
_LOST = {"NoSuchKey", "NoSuchUpload", "404"}
DEFAULT_ATTEMPTS = 5
"""Attempts per S3 request (`AWS_MAX_ATTEMPTS` overrides)."""
T = TypeVar("T")


@dataclass(frozen=True)
class S3Location:
    """Where uploads go: a bucket and a key prefix (empty, or ending with `/`)."""

    bucket: str
    prefix: str = ""

    def key(self, upload_id: str) -> str:
        if not is_upload_id(upload_id):  # defence in depth: handlers reject such IDs first
            raise ValueError(f"not an upload id: {upload_id!r}")
        return self.prefix + upload_id

    def tail_key(self, upload_id: str) -> str:
        return f"{self.key(upload_id)}.tail-{secrets.token_hex(8)}"

    def upload_id_of(self, key: str) -> str | None:
        """The upload an object or multipart key belongs to; None for keys that are not ours."""
        if not key.startswith(self.prefix):
            return None
        candidate = key[len(self.prefix) : len(self.prefix) + 32]
        rest = key[len(self.prefix) + 32 :]
        if not is_upload_id(candidate) or (rest and not rest.startswith(".tail-")):
            return None
        return candidate


def parse_location(storage: str, bucket: str | None, prefix: str) -> S3Location:
    """`--storage s3` with `--s3-bucket` / `--s3-prefix`, or `--storage s3://bucket/prefix`."""
    if storage.startswith("s3://"):
        parts = urlsplit(storage)
        bucket, prefix = parts.netloc, parts.path.lstrip("/") or prefix
    if not bucket:
        raise ValueError("S3 storage needs a bucket: --s3-bucket NAME or --storage s3://NAME/prefix")
    prefix = prefix.strip("/")
    return S3Location(bucket, f"{prefix}/" if prefix else "")


def part_size_for(length: int | None, preferred: int, max_size: int | None) -> int:
    """The part size of a new upload: at least `preferred` (and 5 MiB), and large enough that its
    length (if deferred: `--max-size`, else S3's 5 TiB maximum) fits in 10,000 parts; whole MiB."""
    bound = length if length is not None else (max_size if max_size is not None else MAX_OBJECT_SIZE)
    needed = -(-bound // MAX_PARTS)
    size = max(preferred, MIN_PART_SIZE, needed)
    return -(-size // MiB) * MiB


def s3_error(exc: BaseException, what: str) -> TusError:
    """The one translation of an S3 failure (after botocore's retries) into an answer."""
    if isinstance(exc, TusError):
        return exc
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in _LOST:
            return UploadDataLost("the upload's stored bytes are missing")
        return StorageUnavailable(
            f"object storage error while {what} ({code or 'unknown'}), retry later", {"Retry-After": "5"}
        )
    reason = type(exc).__name__  # e.g. EndpointConnectionError, ReadTimeoutError, NoCredentialsError
    return StorageUnavailable(
        f"object storage unreachable while {what} ({reason}), retry later", {"Retry-After": "5"}
    )


FAILURES: tuple[type[BaseException], ...] = (
    ClientError,
    BotoCoreError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    OSError,
)


async def call(what: str, operation: Awaitable[T]) -> T:
    """Await one S3 operation; failures become `TusError`s."""
    try:
        return await operation
    except FAILURES as exc:
        raise s3_error(exc, what) from exc


def is_lost(exc: BaseException) -> bool:
    return isinstance(exc, ClientError) and str(exc.response.get("Error", {}).get("Code", "")) in _LOST


class S3Client:
    """One aiobotocore client per process, made on first use and closed with the storage."""

    def __init__(
        self, endpoint_url: str | None, region: str | None, environ: Mapping[str, str] | None = None
    ) -> None:
        env = os.environ if environ is None else environ
        self.endpoint_url = endpoint_url
        self.region = region
        retries = {  # AWS's own variables, as every AWS SDK reads them
            "max_attempts": int(env.get("AWS_MAX_ATTEMPTS") or DEFAULT_ATTEMPTS),
            "mode": env.get("AWS_RETRY_MODE") or "standard",
        }
        self.config = AioConfig(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries=retries,
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=64,
            s3={"addressing_style": "path"} if endpoint_url else {},
        )
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._lock = asyncio.Lock()

    async def get(self) -> Any:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    creating = get_session().create_client(
                        "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=self.config
                    )
                    self._client = await self._stack.enter_async_context(creating)
        return self._client

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._client = None
