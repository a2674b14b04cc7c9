"""The error hierarchy of tusserver.

Every failure a client can cause is a `TusError` subclass that carries the HTTP status it implies and a
short text naming the problem. Nothing here knows about Starlette: `app.py` maps these to responses in
one place. Extra response headers (the current `Upload-Offset` on a 409, `Retry-After` on a 503) travel
with the error.
"""

from __future__ import annotations

from collections.abc import Mapping


class TusError(Exception):
    """A request that cannot be served; `status` is the HTTP status to answer with."""

    status = 400

    def __init__(self, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = dict(headers or {})


class BadRequest(TusError):
    """A malformed or contradictory header (400)."""

    status = 400


class Forbidden(TusError):
    """The request is well-formed but not allowed on this upload, e.g. PATCH to a final upload (403)."""

    status = 403


class UploadNotFound(TusError):
    """No upload has this ID (404)."""

    status = 404

    def __init__(self, upload_id: str = "") -> None:
        super().__init__("upload not found")
        self.upload_id = upload_id


class UploadIdTaken(TusError):
    """A pre-create hook chose the ID of an upload that exists (409); nothing is created."""

    status = 409


class UploadRejected(TusError):
    """A pre-finish hook refused the complete upload: the finishing request, and every later one but
    DELETE, get the hook's status and message."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message, headers)
        self.status = status


class UploadStopped(TusError):
    """A post-receive hook stopped the upload while this request was writing it (tusd's
    `StopUpload`): the request answers 400 (or the hook's status) and the upload is terminated."""

    def __init__(
        self,
        message: str = "upload has been stopped by server",
        headers: Mapping[str, str] | None = None,
        status: int = 400,
    ) -> None:
        super().__init__(message, headers)
        self.status = status


class MethodNotAllowed(TusError):
    """The route exists but does not take this method (405)."""

    status = 405

    @classmethod
    def refusing(cls, method: str, allow: str) -> MethodNotAllowed:
        """The 405 for `method`, named in the body only if it is a standard one (a client's
        invented method is not echoed back)."""
        named = method if method in _STANDARD_METHODS else "this method"
        return cls(f"{named} not allowed here", {"Allow": allow})


_STANDARD_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)


class OffsetMismatch(TusError):
    """`Upload-Offset` differs from the upload's current offset (409)."""

    status = 409


class RequestTimeout(TusError):
    """The client sent no body bytes for `--network-timeout` seconds (408); what arrived is kept."""

    status = 408


class UploadGone(TusError):
    """The upload existed but has expired or was terminated (410)."""

    status = 410


class UploadDataLost(UploadGone):
    """The row is there but its bytes are not (removed behind the server's back): 410, not 500."""


class TooLarge(TusError):
    """The upload or this request would exceed `Upload-Length` or the configured maximum (413)."""

    status = 413


class UnsupportedMediaType(TusError):
    """A body was sent with a Content-Type other than `application/offset+octet-stream` (415)."""

    status = 415


class UploadLocked(TusError):
    """Another request holds the upload's lock and did not let go in time (423)."""

    status = 423


class ChecksumMismatch(TusError):
    """The body does not match `Upload-Checksum` (460, tus checksum extension); nothing was stored."""

    status = 460


class ServiceUnavailable(TusError):
    """A dependency (the database, the storage) cannot be reached; the client should retry later (503)."""

    status = 503


class StorageUnavailable(ServiceUnavailable):
    """The storage failed in a way that may pass (EIO, EMFILE): 503 with `Retry-After`."""


class StorageFull(TusError):
    """No room for more bytes: the file system is full, a quota or file size limit was hit, or the
    free space reserve (`--min-free-space`) was reached (507 Insufficient Storage)."""

    status = 507


class LeaseLost(OffsetMismatch):
    """This request's lease was taken over or ran out while it was writing; it stopped and committed
    nothing it no longer owned (409: the client asks HEAD for the offset and resumes)."""
