"""HTTP handlers: one function per tus method, each parse -> service -> respond.

Header syntax is delegated to `protocol` (and `downloads` for GET), state rules to `UploadService`;
a handler only moves values between the request, the service and the response. Errors propagate as
`TusError` and `app.py` turns them into responses.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tusserver import metrics
from tusserver.config import Settings
from tusserver.core import Upload, is_upload_id, utcnow
from tusserver.downloads import (
    DOWNLOAD_SAFETY,
    cache_validators,
    content_disposition,
    media_type,
    not_modified,
    parse_range,
)
from tusserver.errors import MethodNotAllowed, OffsetMismatch, TooLarge, TusError, UploadNotFound
from tusserver.events import EventType, RequestInfo
from tusserver.logs import note_upload
from tusserver.middleware import header_key
from tusserver.pipeline import Body, BodyReader
from tusserver.protocol import (
    CACHE_CONTROL,
    CHECKSUM_ALGORITHMS,
    CONTENT_LENGTH,
    CONTENT_TYPE,
    LOCATION,
    TUS_CHECKSUM_ALGORITHM,
    TUS_EXTENSION,
    TUS_MAX_SIZE,
    TUS_VERSION,
    TUS_VERSION_HEADER,
    UPLOAD_CHECKSUM,
    UPLOAD_CONCAT,
    UPLOAD_DEFER_LENGTH,
    UPLOAD_EXPIRES,
    UPLOAD_LENGTH,
    UPLOAD_METADATA,
    UPLOAD_OFFSET,
    extensions_for,
    format_http_date,
    metadata_text,
    parse_concat,
    parse_creation_length,
    parse_metadata,
    parse_offset,
    parse_size,
    require_offset_stream,
)
from tusserver.uploads import NewUpload, UploadService
from tusserver.urls import public_base

COLLECTION_METHODS = "OPTIONS, POST"
_ACCESS_CHECKED = frozenset({"HEAD", "GET", "PATCH", "DELETE"})
UPLOAD_METHODS = "OPTIONS, HEAD, GET, PATCH, DELETE"


class HeadersOnly(Response):
    """The answers without a body (201, 204, 200 to HEAD), most of what the server sends: the given
    headers, and `Content-Length: 0` where the status allows a body, exactly as Starlette's
    `Response` sends them, built without its general header handling (which lowercases and encodes
    every name on every answer)."""

    def __init__(self, status_code: int, headers: Mapping[str, str] | None = None) -> None:
        self.status_code = status_code
        self.background = None
        self.body = b""
        raw = [(header_key(name), value.encode("latin-1")) for name, value in (headers or {}).items()]
        if status_code >= 200 and status_code not in (204, 304):
            raw.append(_NO_BODY)
        self.raw_headers = raw


_NO_BODY = (b"content-length", b"0")


def _service(request: Request) -> UploadService:
    service: UploadService = request.app.service
    return service


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.settings
    return settings


async def collection(request: Request) -> Response:
    """`<base>` and `<base>/`: discovery and creation."""
    if request.method == "OPTIONS":
        return options(request)
    if request.method == "POST":
        await _pre_access(request, "")
        return await create(request)
    raise MethodNotAllowed.refusing(request.method, COLLECTION_METHODS)


async def resource(request: Request) -> Response:
    """`<base>/<upload_id>`: status, download, append, terminate."""
    upload_id = request.path_params["upload_id"]
    if not is_upload_id(upload_id):
        raise UploadNotFound(upload_id)
    note_upload(upload_id)
    if request.method in _ACCESS_CHECKED:
        await _pre_access(request, upload_id)
    if request.method == "HEAD":
        return await head(request, upload_id)
    if request.method == "PATCH":
        return await patch(request, upload_id)
    if request.method == "DELETE":
        await _service(request).terminate(upload_id, _for_hooks(request))
        return HeadersOnly(204)
    if request.method == "GET" and not _settings(request).disable_download:
        return await download(request, upload_id)
    if request.method == "OPTIONS":
        return options(request)
    allowed = UPLOAD_METHODS.replace(" GET,", "") if _settings(request).disable_download else UPLOAD_METHODS
    raise MethodNotAllowed.refusing(request.method, allowed)


def options(request: Request) -> Response:
    headers = {
        TUS_VERSION_HEADER: TUS_VERSION,
        TUS_EXTENSION: ",".join(extensions_for(_service(request).storage.capabilities)),
        TUS_CHECKSUM_ALGORITHM: ",".join(CHECKSUM_ALGORITHMS),
    }
    max_size = _settings(request).max_size
    if max_size is not None:
        headers[TUS_MAX_SIZE] = str(max_size)
    return HeadersOnly(200, headers)


async def create(request: Request) -> Response:
    headers = request.headers
    concat = parse_concat(headers.get(UPLOAD_CONCAT))
    if concat and concat.is_final:  # its length comes from the partials; a given one is refused later
        length = parse_size(headers.get(UPLOAD_LENGTH), UPLOAD_LENGTH)
    else:
        length = parse_creation_length(headers.get(UPLOAD_LENGTH), headers.get(UPLOAD_DEFER_LENGTH))
    new = NewUpload(length=length, metadata=_metadata(request), concat=concat)
    body = _body(request) if _has_body(request) else None
    if body is not None:
        require_offset_stream(headers.get(CONTENT_TYPE))
    upload = await _service(request).create(new, body, _for_hooks(request))
    note_upload(upload.id)
    location = _public_base(request) + _settings(request).base_path + upload.id
    return HeadersOnly(201, {LOCATION: location, **_progress_headers(upload)})


async def head(request: Request, upload_id: str) -> Response:
    upload = await _service(request).status(upload_id)
    return HeadersOnly(200, _state_headers(upload))


async def patch(request: Request, upload_id: str) -> Response:
    """PATCH; one that does not take its whole body is counted by cause (the answer's status, or
    `disconnect` when the client left: then nobody reads the answer)."""
    headers = request.headers
    service = _service(request)
    try:
        require_offset_stream(headers.get(CONTENT_TYPE))
        offset = parse_offset(headers.get(UPLOAD_OFFSET))
        declared = parse_size(headers.get(UPLOAD_LENGTH), UPLOAD_LENGTH)
        body = _body(request)
        upload = await service.append(upload_id, offset, body, declared)
    except TusError as problem:
        count_patch_failure(request, upload_id, metrics.failure_cause(problem))
        raise
    if body.reader.disconnected:
        count_patch_failure(request, upload_id, "disconnect", upload)
    return HeadersOnly(204, _progress_headers(upload))


def count_patch_failure(request: Request, upload_id: str, cause: str, upload: Upload | None = None) -> None:
    """A PATCH (tus or IETF) that did not store its whole body, for `/metrics` and the operator page."""
    metrics.patch_failures.labels(cause).inc()
    _service(request).pipeline.activity.failed(upload_id, cause, upload)


async def download(request: Request, upload_id: str) -> Response:
    """GET: stream a finished upload, with its declared type when safe and single ranges. A finished
    upload never changes, so it is cacheable and answers conditional requests with 304."""
    upload = await _service(request).get(upload_id)
    if not upload.is_complete:
        raise OffsetMismatch("upload is not finished yet", {UPLOAD_OFFSET: str(upload.offset)})
    validators = cache_validators(upload)
    if not_modified(request.headers, validators):
        return Response(status_code=304, headers=validators)
    metadata = metadata_text(upload.metadata)
    media = media_type(metadata.get("filetype"))
    total = upload.offset
    span = parse_range(request.headers.get("range"), total)
    start, end = (span.start, span.end) if span else (0, total)
    stream = await _service(request).storage.read(upload, start, end)  # 410 now if the bytes are gone
    headers = {
        **validators,
        **DOWNLOAD_SAFETY,
        "Content-Length": str(end - start),
        "Content-Disposition": content_disposition(metadata.get("filename"), media),
        "Accept-Ranges": "bytes",
    }
    if span:
        headers["Content-Range"] = span.content_range(total)
    return StreamingResponse(stream, status_code=206 if span else 200, headers=headers, media_type=media)


def _metadata(request: Request) -> str | None:
    value = request.headers.get(UPLOAD_METADATA)
    limit = _settings(request).max_metadata_size
    if value is not None and len(value) > limit:
        raise TooLarge(f"{UPLOAD_METADATA} is longer than {limit} bytes")
    return parse_metadata(value)


def _public_base(request: Request) -> str:
    host = request.headers.get("host") or _server_address(request)
    root_path = request.scope.get("root_path", "")
    scheme = request.scope.get("scheme", "http")  # `request.url` would parse the whole URL for it
    return public_base(scheme, host, root_path, request.headers, _settings(request).behind_proxy)


def _server_address(request: Request) -> str:
    """host[:port] of the listening socket, for a request that came without a Host header."""
    server = request.scope.get("server")
    if not server:
        return "localhost"
    host, port = server
    return f"{host}:{port}" if port else str(host)


def _progress_headers(upload: Upload) -> dict[str, str]:
    headers = {UPLOAD_OFFSET: str(upload.offset)}
    if upload.expires_at is not None and upload.completed_at is None:
        headers[UPLOAD_EXPIRES] = format_http_date(upload.expires_at)
    return headers


def _state_headers(upload: Upload) -> dict[str, str]:
    headers = {**_progress_headers(upload), CACHE_CONTROL: "no-store"}
    if upload.length is None:
        headers[UPLOAD_DEFER_LENGTH] = "1"
    else:
        headers[UPLOAD_LENGTH] = str(upload.length)
    if upload.metadata is not None:
        headers[UPLOAD_METADATA] = upload.metadata
    if upload.concat is not None:
        headers[UPLOAD_CONCAT] = upload.concat
    return headers


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in {"", "0"}
    return "chunked" in request.headers.get("transfer-encoding", "").lower()


def _body(request: Request) -> Body:
    content_length = parse_size(request.headers.get(CONTENT_LENGTH), CONTENT_LENGTH)
    if content_length is None and not _has_body(request):
        content_length = 0
    checksum = request.headers.get(UPLOAD_CHECKSUM)
    return Body(BodyReader(request.receive), content_length, checksum, _for_hooks(request))


async def _pre_access(request: Request, upload_id: str) -> None:
    """The pre-access hook, if one listens: before any state is changed or a byte read. It sees the
    upload as stored (its owner, metadata, offset; 404 first for an unknown one), or an empty one for
    a POST."""
    service = _service(request)
    if not service.hooks.wants(EventType.PRE_ACCESS):
        return
    if upload_id:
        known = await service.records.get(upload_id)
        where = service.storage.describe(known)
    else:
        now = utcnow()
        known, where = Upload(id="", offset=0, length=None, created_at=now, updated_at=now), {}
    await service.hooks.before(EventType.PRE_ACCESS, known, where, request_info(request))


def _for_hooks(request: Request) -> RequestInfo | None:
    """The request as hooks see it, when any hook listens (not collected per request otherwise)."""
    return request_info(request) if _service(request).hooks.active else None


def request_info(request: Request) -> RequestInfo:
    """The request as hooks see it (tusd's `HTTPRequest`)."""
    client = request.client
    uri = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    headers: dict[str, list[str]] = {}
    for name, value in request.headers.items():
        headers.setdefault("-".join(part.capitalize() for part in name.split("-")), []).append(value)
    return RequestInfo(request.method, uri, f"{client.host}:{client.port}" if client else "", headers)
