"""The final upload of a concatenation, assembled in S3 (`Assembly`): one new multipart upload whose
parts are copied from the partials' objects by `UploadPartCopy` (ranges of at most 5 GiB), and
downloaded through a spool where a piece is too small to be a part of its own (every part but the
last must hold at least 5 MiB). Nothing is read into memory whole; a failure aborts the assembly.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tusserver.errors import UploadDataLost
from tusserver.storage.s3_client import MAX_COPY_PART, MIN_PART_SIZE, call
from tusserver.storage.s3_writer import Spool

if TYPE_CHECKING:
    from tusserver.storage.s3 import S3Storage

log = logging.getLogger(__name__)
READ_SIZE = 1024 * 1024


class Assembly:
    """A final upload of a concatenation: parts copied in S3 where they are large enough, through a
    spool where they are not (every part but the last must hold at least 5 MiB)."""

    def __init__(self, storage: S3Storage, key: str, multipart: str) -> None:
        self._storage = storage
        self._key = key
        self._multipart = multipart
        self._etags: list[str] = []
        self._spool = Spool(storage)

    async def add(self, source: str, length: int) -> None:
        position = 0
        while position < length:
            remaining = length - position
            if self._spool.size == 0 and remaining >= MIN_PART_SIZE:
                size = min(remaining, MAX_COPY_PART)
                if 0 < remaining - size < MIN_PART_SIZE:  # never leave a sliver that cannot be a part
                    size = remaining - MIN_PART_SIZE
                await self._copy(source, position, size)
                position += size
                continue
            size = min(remaining, MIN_PART_SIZE - self._spool.size) if self._spool.size else remaining
            await self._download(source, position, size)
            position += size
            if self._spool.size >= MIN_PART_SIZE:
                await self._send_spool()

    async def _copy(self, source: str, start: int, size: int) -> None:
        client = await self._storage.client.get()
        answer = await call(
            "assembling the upload",
            client.upload_part_copy(
                Bucket=self._storage.bucket,
                Key=self._key,
                UploadId=self._multipart,
                PartNumber=len(self._etags) + 1,
                CopySource={"Bucket": self._storage.bucket, "Key": source},
                CopySourceRange=f"bytes={start}-{start + size - 1}",
            ),
        )
        self._etags.append(str(answer["CopyPartResult"]["ETag"]))

    async def _download(self, source: str, start: int, size: int) -> None:
        client = await self._storage.client.get()
        response = await call(
            "assembling the upload",
            client.get_object(
                Bucket=self._storage.bucket, Key=source, Range=f"bytes={start}-{start + size - 1}"
            ),
        )
        got = 0
        async with response["Body"] as body:
            while block := await call("assembling the upload", body.read(READ_SIZE)):
                got += len(block)
                await self._spool.append([block], None)
        if got != size:
            raise UploadDataLost("a partial upload is shorter than its committed offset")

    async def _send_spool(self) -> None:
        client = await self._storage.client.get()
        body = await self._spool.rewound()
        answer = await call(
            "assembling the upload",
            client.upload_part(
                Bucket=self._storage.bucket,
                Key=self._key,
                UploadId=self._multipart,
                PartNumber=len(self._etags) + 1,
                Body=body,
                ContentLength=self._spool.size,
            ),
        )
        self._etags.append(str(answer["ETag"]))
        await self._spool.clear()

    async def complete(self) -> None:
        if self._spool.size:
            await self._send_spool()
        self._spool.close()
        client = await self._storage.client.get()
        parts = [{"PartNumber": number, "ETag": etag} for number, etag in enumerate(self._etags, 1)]
        await call(
            "assembling the upload",
            client.complete_multipart_upload(
                Bucket=self._storage.bucket,
                Key=self._key,
                UploadId=self._multipart,
                MultipartUpload={"Parts": parts},
            ),
        )

    async def cancel(self) -> None:
        self._spool.close()
        try:
            await self._storage.discard(self._key[len(self._storage.location.prefix) :])
        except Exception as exc:
            log.warning("s3_assembly_not_aborted key=%s reason=%s", self._key, exc)
