"""HTTP handlers: one function per tus method, each parse -> service -> respond.

Header syntax is delegated to `protocol`, state rules to `UploadService`; a handler only moves values
between the request, the service and the response. Errors propagate as `TusError` and `app.py` turns
them into responses.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tusserver.bodies import RequestBody
from tusserver.config import Settings
from tusserver.core import Upload, is_upload_id
from tusserver.errors import MethodNotAllowed, UploadNotFound
from tusserver.protocol import (
    CACHE_CONTROL,
    CONTENT_TYPE,
    EXTENSIONS,
    LOCATION,
    TUS_EXTENSION,
    TUS_MAX_SIZE,
    TUS_VERSION,
    TUS_VERSION_HEADER,
    UPLOAD_CONCAT,
    UPLOAD_DEFER_LENGTH,
    UPLOAD_LENGTH,
    UPLOAD_METADATA,
    UPLOAD_OFFSET,
    parse_creation_length,
    parse_metadata,
    parse_offset,
    parse_size,
    require_offset_stream,
)
from tusserver.uploads import Body, NewUpload, UploadService

COLLECTION_METHODS = "OPTIONS, POST"
UPLOAD_METHODS = "OPTIONS, HEAD, PATCH, DELETE"


def _service(request: Request) -> UploadService:
    service: UploadService = request.app.state.service
    return service


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def collection(request: Request) -> Response:
    """`<base>` and `<base>/`: discovery and creation."""
    if request.method == "OPTIONS":
        return options(request)
    if request.method == "POST":
        return await create(request)
    raise MethodNotAllowed(f"{request.method} not allowed here", {"Allow": COLLECTION_METHODS})


async def resource(request: Request) -> Response:
    """`<base>/<upload_id>`: status, append, terminate."""
    upload_id = request.path_params["upload_id"]
    if not is_upload_id(upload_id):
        raise UploadNotFound(upload_id)
    if request.method == "HEAD":
        return await head(request, upload_id)
    if request.method == "PATCH":
        return await patch(request, upload_id)
    if request.method == "DELETE":
        await _service(request).terminate(upload_id)
        return Response(status_code=204)
    if request.method == "OPTIONS":
        return options(request)
    raise MethodNotAllowed(f"{request.method} not allowed here", {"Allow": UPLOAD_METHODS})


def options(request: Request) -> Response:
    headers = {TUS_VERSION_HEADER: TUS_VERSION, TUS_EXTENSION: ",".join(EXTENSIONS)}
    max_size = _settings(request).max_size
    if max_size is not None:
        headers[TUS_MAX_SIZE] = str(max_size)
    return Response(status_code=200, headers=headers)


async def create(request: Request) -> Response:
    headers = request.headers
    new = NewUpload(
        length=parse_creation_length(headers.get(UPLOAD_LENGTH), headers.get(UPLOAD_DEFER_LENGTH)),
        metadata=parse_metadata(headers.get(UPLOAD_METADATA)),
    )
    body = _body(request) if _has_body(request) else None
    if body is not None:
        require_offset_stream(headers.get(CONTENT_TYPE))
    upload = await _service(request).create(new, body)
    location = f"{str(request.base_url).rstrip('/')}{_settings(request).base_path}{upload.id}"
    return Response(status_code=201, headers={LOCATION: location, UPLOAD_OFFSET: str(upload.offset)})


async def head(request: Request, upload_id: str) -> Response:
    upload = await _service(request).get(upload_id)
    return Response(status_code=200, headers=_state_headers(upload))


async def patch(request: Request, upload_id: str) -> Response:
    headers = request.headers
    require_offset_stream(headers.get(CONTENT_TYPE))
    offset = parse_offset(headers.get(UPLOAD_OFFSET))
    declared = parse_size(headers.get(UPLOAD_LENGTH), UPLOAD_LENGTH)
    upload = await _service(request).append(upload_id, offset, _body(request), declared)
    return Response(status_code=204, headers={UPLOAD_OFFSET: str(upload.offset)})


def _state_headers(upload: Upload) -> dict[str, str]:
    headers = {UPLOAD_OFFSET: str(upload.offset), CACHE_CONTROL: "no-store"}
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
    length = request.headers.get("content-length")
    content_length = int(length) if length and length.strip().isdigit() else None
    if content_length is None and not _has_body(request):
        content_length = 0
    return Body(RequestBody(request.receive), content_length)
