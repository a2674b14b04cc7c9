"""Upload bytes in an S3-compatible bucket (AWS S3, MinIO, Cloudflare R2, Backblaze B2, Ceph), so that
instances share only the database and the bucket.

An upload is a multipart upload from creation on, with a part size fixed then (`part_size_for`). Its
state lives in the upload row (`Upload.storage`), committed with the offset: `key`, `multipart` (the
S3 UploadId), `part_size`, `parts` (ETags of parts 1..n, in order) and `tail` (the object holding the
bytes past the last full part). HEAD therefore costs no S3 request, and a writer killed at any point
leaves the committed state intact: the next one continues from it. Writing: `s3_writer.py`.

`finish` (after the completing commit) sends the tail as the last part by `UploadPartCopy` and
completes the multipart upload; a zero-length upload becomes an empty object. It is idempotent: an
upload already completed is recognised by its object, and `finished` in the state says it was
recorded (`unfinished`). Concatenation: `s3_assembly.py`. `delete` and `discard` abort every multipart
upload and delete every object of an upload; `stored_before` also reports multipart uploads, so the
sweeper aborts those no row knows, and `pending_before` lets it finish what a crash interrupted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from tusserver.core import Hasher, Upload, is_upload_id
from tusserver.errors import StorageUnavailable, TooLarge
from tusserver.storage.s3_assembly import Assembly
from tusserver.storage.s3_client import (
    FAILURES,
    MAX_OBJECT_SIZE,
    MIN_PART_SIZE,
    S3Client,
    S3Location,
    call,
    is_lost,
    part_size_for,
    s3_error,
)
from tusserver.storage.s3_writer import S3Writer

log = logging.getLogger(__name__)
READ_SIZE = 1024 * 1024


class S3Storage:
    """Storage in a bucket under a prefix; see the module docstring."""

    capabilities = frozenset({"concatenation"})

    def __init__(
        self,
        location: S3Location,
        client: S3Client,
        spool_dir: Path,
        part_size: int = 8 * 1024 * 1024,
        max_size: int | None = None,
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError("--s3-part-size must be at least 5 MiB (S3's smallest part)")
        self.location = location
        self.client = client
        self.spool_dir = spool_dir
        self.part_size = part_size
        self.max_size = max_size
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tusserver-spool")
        self._background: set[asyncio.Task[None]] = set()

    @property
    def bucket(self) -> str:
        return self.location.bucket

    async def aclose(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.client.aclose()
        self.pool.shutdown(wait=True)

    async def problem(self) -> str | None:
        """Why the bucket cannot be used (start-up check), or None: it can be listed."""
        client = await self.client.get()
        try:
            await client.list_objects_v2(Bucket=self.bucket, Prefix=self.location.prefix, MaxKeys=1)
        except FAILURES as exc:
            code = exc.response.get("Error", {}).get("Code", "") if hasattr(exc, "response") else ""
            return f"S3 bucket {self.bucket} is not usable: {code or type(exc).__name__}"
        return None

    async def create(self, upload: Upload) -> Mapping[str, str]:
        if upload.length is not None and upload.length > MAX_OBJECT_SIZE:
            raise TooLarge(f"Upload-Length {upload.length} exceeds S3's maximum object size")
        key = self.location.key(upload.id)
        state = {"key": key, "part_size": str(part_size_for(upload.length, self.part_size, self.max_size))}
        if upload.length == 0:
            return {**state, "multipart": "", "parts": "", "tail": ""}
        client = await self.client.get()
        answer = await call(
            "creating the upload", client.create_multipart_upload(Bucket=self.bucket, Key=key)
        )
        return {**state, "multipart": str(answer["UploadId"]), "parts": "", "tail": ""}

    def writer(self, upload: Upload, hasher: Hasher | None = None) -> S3Writer:
        return S3Writer(self, upload, hasher)

    async def room(self) -> int | None:
        return None

    def committed(self, before: Upload, after: Upload) -> None:
        """A commit replaced `before`'s state by `after`'s: the tail only `before` named goes now, in
        the background (a failure leaves debris that `finish` or `delete` removes)."""
        old = before.storage.get("tail", "")
        if old and old != after.storage.get("tail", ""):
            task = asyncio.create_task(self._delete_quietly([old]))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def unfinished(self, upload: Upload) -> bool:
        # A final upload of a concatenation has no state: assembled before its row existed.
        return upload.is_complete and "key" in upload.storage and upload.storage.get("finished") != "1"

    async def finish(self, upload: Upload) -> Mapping[str, str]:
        await self._finish(upload)
        return {"finished": "1", "multipart": "", "parts": "", "tail": ""}

    async def _finish(self, upload: Upload) -> None:
        state = upload.storage
        key = state.get("key") or self.location.key(upload.id)
        client = await self.client.get()
        etags = [tag for tag in state.get("parts", "").split(",") if tag]
        multipart, tail = state.get("multipart", ""), state.get("tail", "")
        if not multipart or (not etags and not tail):  # nothing stored: an empty object
            await call("finishing the upload", client.put_object(Bucket=self.bucket, Key=key, Body=b""))
            await self._abort(await self._multiparts(key))
            return
        if await self._holds(key, upload.length):  # completed before a crash: only cleaning up is left
            await self._clean_up_after_completion(upload.id, key)
            return
        try:
            if tail:
                copied = await client.upload_part_copy(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=multipart,
                    PartNumber=len(etags) + 1,
                    CopySource={"Bucket": self.bucket, "Key": tail},
                )
                etags.append(str(copied["CopyPartResult"]["ETag"]))
            parts = [{"PartNumber": number, "ETag": etag} for number, etag in enumerate(etags, 1)]
            await client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=multipart, MultipartUpload={"Parts": parts}
            )
        except FAILURES as exc:
            if not (is_lost(exc) and await self._holds(key, upload.length)):  # a finish in parallel
                raise s3_error(exc, "finishing the upload") from exc
        await self._clean_up_after_completion(upload.id, key)

    async def _clean_up_after_completion(self, upload_id: str, key: str) -> None:
        # A CreateMultipartUpload whose answer was lost and retried left another one under this key.
        await self._abort(await self._multiparts(key))
        await self._delete_quietly(await self._tails(upload_id))

    async def _holds(self, key: str, length: int | None) -> bool:
        client = await self.client.get()
        try:
            head = await client.head_object(Bucket=self.bucket, Key=key)
        except FAILURES as exc:
            if is_lost(exc):
                return False
            raise s3_error(exc, "finishing the upload") from exc
        return length is None or int(head["ContentLength"]) == length

    async def read(self, upload: Upload, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        stop = upload.offset if end is None else min(end, upload.offset)
        key = upload.storage.get("key") or self.location.key(upload.id)
        client = await self.client.get()
        if stop <= start:
            await call("reading", client.head_object(Bucket=self.bucket, Key=key))
            return _nothing()
        request = {"Bucket": self.bucket, "Key": key, "Range": f"bytes={start}-{stop - 1}"}
        response = await call("reading", client.get_object(**request))
        return _chunks(response["Body"])

    async def delete(self, upload: Upload) -> None:
        await self.discard(upload.id)

    async def discard(self, upload_id: str) -> bool:
        key = self.location.key(upload_id)
        objects = [item["Key"] for item in await self._objects(key)]
        uploads = await self._multiparts(key)
        await self._abort(uploads)
        await self._delete(objects)
        return bool(objects or uploads)

    async def stored_before(self, cutoff: datetime, batch: int) -> AsyncIterator[list[str]]:
        latest: dict[str, datetime] = {}
        for item in await self._objects(self.location.prefix):
            _note(latest, self.location.upload_id_of(item["Key"]), item["LastModified"])
        for item in await self._multipart_items(self.location.prefix):
            _note(latest, self.location.upload_id_of(item["Key"]), item["Initiated"])
        names = sorted(name for name, when in latest.items() if when < cutoff)
        for start in range(0, len(names), batch):
            yield names[start : start + batch]

    async def pending_before(self, cutoff: datetime, batch: int) -> AsyncIterator[list[str]]:
        names = sorted(
            {
                name
                for item in await self._multipart_items(self.location.prefix)
                if item["Initiated"] < cutoff and (name := self.location.upload_id_of(item["Key"]))
            }
        )
        for start in range(0, len(names), batch):
            yield names[start : start + batch]

    async def missing(self, upload_ids: Sequence[str]) -> set[str]:
        """One listing of the key range the IDs span (objects, then multipart uploads), not one
        request per ID."""
        ids = sorted(set(upload_ids))
        if not ids:
            return set()
        first, last = self.location.key(ids[0])[:-1], self.location.key(ids[-1]) + "~"
        found = [item["Key"] for item in await self._objects(self.location.prefix, first, last)]
        found += [item["Key"] for item in await self._multipart_items(self.location.prefix, first, last)]
        return set(ids) - {self.location.upload_id_of(key) for key in found}

    def describe(self, upload: Upload) -> Mapping[str, str]:
        key = self.location.key(upload.id) if is_upload_id(upload.id) else ""  # no ID yet: pre-create
        return {"type": "s3store", "bucket": self.bucket, "key": key}

    async def concatenate(self, upload: Upload, parts: Sequence[Upload]) -> None:
        key = self.location.key(upload.id)
        if upload.offset == 0:
            client = await self.client.get()
            await call("assembling the upload", client.put_object(Bucket=self.bucket, Key=key, Body=b""))
            return
        client = await self.client.get()
        answer = await call(
            "assembling the upload", client.create_multipart_upload(Bucket=self.bucket, Key=key)
        )
        assembly = Assembly(self, key, str(answer["UploadId"]))
        try:
            for part in parts:
                await assembly.add(part.storage.get("key") or self.location.key(part.id), part.offset)
            await assembly.complete()
        except BaseException:
            await assembly.cancel()
            raise

    async def _tails(self, upload_id: str) -> list[str]:
        prefix = self.location.key(upload_id) + ".tail-"
        return [item["Key"] for item in await self._objects(prefix)]

    async def _objects(self, prefix: str, after: str = "", until: str | None = None) -> list[dict[str, Any]]:
        """Objects under `prefix` with keys above `after` and up to `until`."""
        client = await self.client.get()
        found: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            extra: dict[str, Any] = {"ContinuationToken": token} if token else {}
            if after:
                extra["StartAfter"] = after
            page = await call(
                "listing objects", client.list_objects_v2(Bucket=self.bucket, Prefix=prefix, **extra)
            )
            contents = page.get("Contents", [])
            found.extend(item for item in contents if until is None or item["Key"] <= until)
            token = page.get("NextContinuationToken")
            past = until is not None and contents and contents[-1]["Key"] > until
            if not page.get("IsTruncated") or not token or past:
                return found

    async def _multipart_items(
        self, prefix: str, after: str = "", until: str | None = None
    ) -> list[dict[str, Any]]:
        """Multipart uploads under `prefix` with keys above `after` and up to `until`."""
        client = await self.client.get()
        found: list[dict[str, Any]] = []
        markers: dict[str, str] = {"KeyMarker": after} if after else {}
        while True:
            page = await call(
                "listing multipart uploads",
                client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix, **markers),
            )
            uploads = page.get("Uploads", [])
            found.extend(item for item in uploads if until is None or item["Key"] <= until)
            if not page.get("IsTruncated") or (until is not None and uploads and uploads[-1]["Key"] > until):
                return found
            markers = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}

    async def _multiparts(self, prefix: str) -> list[tuple[str, str]]:
        return [(item["Key"], item["UploadId"]) for item in await self._multipart_items(prefix)]

    async def _abort(self, uploads: Iterable[tuple[str, str]]) -> None:
        client = await self.client.get()
        for key, multipart in uploads:
            try:
                await client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=multipart)
            except FAILURES as exc:
                if not is_lost(exc):
                    raise s3_error(exc, "aborting a multipart upload") from exc

    async def _delete(self, keys: Sequence[str]) -> None:
        client = await self.client.get()
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            answer = await call(
                "deleting objects",
                client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}),
            )
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise StorageUnavailable(
                    f"object storage refused to delete {first.get('Key')} ({first.get('Code')})",
                    {"Retry-After": "5"},
                )

    async def _delete_quietly(self, keys: Sequence[str]) -> None:
        try:
            await self._delete(keys)
        except Exception as exc:  # debris only: finish or delete removes it later
            log.warning("s3_tail_not_deleted keys=%d reason=%s", len(keys), exc)


def _note(latest: dict[str, datetime], upload_id: str | None, when: datetime) -> None:
    if upload_id is not None and (upload_id not in latest or latest[upload_id] < when):
        latest[upload_id] = when


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


async def _chunks(body: Any) -> AsyncIterator[bytes]:
    """A GetObject body as blocks; a failure mid-stream ends the response (headers are out)."""
    try:
        while True:
            block: bytes = await body.read(READ_SIZE)
            if not block:
                return
            yield block
    finally:
        body.close()
