"""The vocabulary shared by every layer: the `Upload` value, upload IDs and the seams between layers.

`Upload` is a frozen snapshot of one row of upload state; it is changed with `dataclasses.replace` and
stored by an `UploadStore`. `Storage` moves bytes and knows nothing of HTTP, SQL or locks. `Hook`
receives lifecycle events. Nothing in this module performs I/O.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

# 128 random bits, lowercase hex: unguessable, and safe as a file name by construction.
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


def new_upload_id() -> str:
    return secrets.token_hex(16)


def is_upload_id(text: str) -> bool:
    """True for strings `new_upload_id` could have made; anything else never reaches storage."""
    return _UPLOAD_ID.fullmatch(text) is not None


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Upload:
    """The state of one upload, as committed to the database."""

    id: str
    offset: int
    length: int | None
    created_at: datetime
    updated_at: datetime
    metadata: str | None = None
    """The `Upload-Metadata` header exactly as the client sent it at creation (echoed by HEAD)."""
    concat: str | None = None
    """The `Upload-Concat` header as received: `partial`, `final;...`, or None for a plain upload."""
    expires_at: datetime | None = None
    completed_at: datetime | None = None
    storage: Mapping[str, str] = field(default_factory=dict)
    """Backend-owned state (e.g. an S3 multipart upload ID); opaque to everything but the backend."""

    @property
    def is_complete(self) -> bool:
        return self.length is not None and self.offset == self.length

    @property
    def is_partial(self) -> bool:
        return self.concat == "partial"

    @property
    def is_final(self) -> bool:
        return self.concat is not None and self.concat.startswith("final;")


@dataclass(frozen=True, slots=True)
class FinishEvent:
    """Sent to hooks once an upload has received its last byte."""

    upload: Upload
    metadata: Mapping[str, str]
    """`Upload-Metadata` decoded (values as UTF-8 text, undecodable bytes replaced)."""
    storage: Mapping[str, str]
    """Where the bytes are, as the storage backend describes it (e.g. `type` and `path`)."""

    def as_json(self) -> dict[str, object]:
        upload = self.upload
        return {
            "type": "post-finish",
            "upload": {
                "id": upload.id,
                "length": upload.length,
                "offset": upload.offset,
                "metadata": dict(self.metadata),
                "concat": upload.concat,
                "created_at": upload.created_at.isoformat(),
                "completed_at": upload.completed_at.isoformat() if upload.completed_at else None,
                "storage": dict(self.storage),
            },
        }


class Checkpoint(Protocol):
    """Lets a long write commit its progress now and then (crash safety without waiting for the end)."""

    def due(self) -> bool:
        """True when the writer would like the bytes so far to be made durable and reported."""
        ...

    async def reached(self, written: int) -> None:
        """The first `written` bytes of this write are stored (and synced if the backend syncs)."""
        ...


class Storage(Protocol):
    """Where upload bytes live. Bytes beyond `upload.offset` are debris of an aborted write."""

    async def create(self, upload: Upload) -> Mapping[str, str]:
        """Prepare room for a new upload; returns backend state to keep in `upload.storage`."""
        ...

    async def write(
        self, upload: Upload, chunks: AsyncIterable[bytes], checkpoint: Checkpoint | None = None
    ) -> int:
        """Write `chunks` starting at `upload.offset` until they end; returns the bytes written.
        Between blocks, when `checkpoint.due()`, report progress through `checkpoint.reached`."""
        ...

    async def concatenate(self, upload: Upload, parts: Sequence[Upload]) -> None:
        """Fill the new `upload` with the committed bytes of `parts`, in order, streaming."""
        ...

    async def finish(self, upload: Upload) -> None:
        """Make the stored object exactly `upload.length` bytes long; called once it is complete."""
        ...

    def read(self, upload: Upload, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Stream the committed bytes in [start, end)."""
        ...

    async def delete(self, upload: Upload) -> None:
        """Remove every trace of the upload's bytes. Idempotent."""
        ...

    def describe(self, upload: Upload) -> Mapping[str, str]:
        """Where the bytes are, for hooks and logs (e.g. `{"type": "local", "path": ...}`)."""
        ...


class Hook(Protocol):
    """Receives lifecycle events. Runs in the background; it can neither fail nor delay a request."""

    async def on_finish(self, event: FinishEvent) -> None: ...
