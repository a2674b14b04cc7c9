"""HTTP handlers of IETF Resumable Uploads on the tus endpoint: same routes, storage and state.

A request carrying `Upload-Draft-Interop-Version` with a version this server speaks (5, 6 or 8, see
`ietf.SUPPORTED`) is handled here; every other request goes to `handlers` unchanged (tus 1.0). Creation
is a POST with `Upload-Complete` to the collection; HEAD, PATCH and DELETE act on the upload resource,
which is the same row and file a tus client would see. State rules stay in `UploadService` and the
write pipeline; this module maps the draft's fields onto them and answers as the draft says (§ numbers
of draft -11). Request plumbing (body, public URL, hook view, pre-access) is `handlers`' own, used
through its underscore helpers: one HTTP layer, two dialects.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from tusserver import handlers, metrics
from tusserver.core import Upload, is_upload_id, utcnow
from tusserver.errors import (
    BadRequest,
    MethodNotAllowed,
    OffsetMismatch,
    TooLarge,
    TusError,
    UnsupportedMediaType,
)
from tusserver.ietf import (
    ACCEPT_PATCH,
    CURRENT_INTEROP,
    INTEROP_VERSION,
    PARTIAL_UPLOAD,
    UPLOAD_COMPLETE,
    UPLOAD_LIMIT,
    Interop,
    Problem,
    completed_upload,
    creation_metadata,
    inconsistent_length,
    interop_of,
    mismatching_offset,
    parse_integer,
    require_complete,
    sf_boolean,
    upload_limit,
)
from tusserver.interim import send_interim
from tusserver.pipeline import Body, BodyReader
from tusserver.protocol import (
    CACHE_CONTROL,
    CONTENT_LENGTH,
    CONTENT_TYPE,
    LOCATION,
    UPLOAD_LENGTH,
    UPLOAD_METADATA,
    UPLOAD_OFFSET,
    parse_size,
)
from tusserver.uploads import NewUpload

Handler = Callable[[Request], Awaitable[Response]]


class _Problem(Exception):
    """A draft-defined problem to answer with (status, document, extra headers)."""

    def __init__(self, status: int, problem: Problem, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(problem.title)
        self.status = status
        self.problem = problem
        self.headers = headers


async def collection(request: Request) -> Response:
    """`<base>`: IETF upload creation and discovery, else the tus handler."""
    interop = interop_of(request.headers.get(INTEROP_VERSION))
    if interop is None:
        return await handlers.collection(request)
    if request.method == "OPTIONS":
        return _respond(interop, 200, {ACCEPT_PATCH: PARTIAL_UPLOAD, **_limit(request, interop, None)})
    if request.method != "POST":
        raise MethodNotAllowed.refusing(request.method, "OPTIONS, POST")
    await handlers._pre_access(request, "")
    return await _answering(request, interop, create)


async def resource(request: Request) -> Response:
    """`<base>/<upload_id>`: offset retrieval, append and cancellation, else the tus handler."""
    interop = interop_of(request.headers.get(INTEROP_VERSION))
    if interop is None or request.method not in {"HEAD", "PATCH", "DELETE"}:
        return await handlers.resource(request)  # GET (download) and OPTIONS are the same for both
    upload_id = request.path_params["upload_id"]
    if not is_upload_id(upload_id):
        return await handlers.resource(request)  # 404
    await handlers._pre_access(request, upload_id)
    handler = {"HEAD": head, "PATCH": append, "DELETE": cancel}[request.method]
    try:
        response = await _answering(request, interop, handler)
    except TusError as problem:
        if request.method == "PATCH":
            handlers.count_patch_failure(request, upload_id, metrics.failure_cause(problem))
        raise
    if request.method == "PATCH" and response.status_code >= 400:  # a draft problem document
        handlers.count_patch_failure(request, upload_id, metrics.cause_of_status(response.status_code))
    return response


async def _answering(
    request: Request, interop: Interop, handler: Callable[[Request, Interop], Awaitable[Response]]
) -> Response:
    """Run `handler`; a draft problem becomes its document, a 413 gets `Upload-Limit` (§4.1.4)."""
    try:
        return await handler(request, interop)
    except _Problem as answer:
        content, media_type = answer.problem.body(interop)
        headers = {INTEROP_VERSION: str(interop.version), **dict(answer.headers)}
        body = b"" if request.method == "HEAD" else content
        return Response(body, status_code=answer.status, headers=headers, media_type=media_type)
    except TooLarge as exc:
        exc.headers.update(_limit(request, interop, None))
        raise


async def create(request: Request, interop: Interop) -> Response:
    """§4.2: POST with `Upload-Complete`; the body (possibly empty) is the start of the representation."""
    headers = request.headers
    complete = require_complete(headers.get(UPLOAD_COMPLETE))
    length = parse_integer(headers.get(UPLOAD_LENGTH), UPLOAD_LENGTH)
    has_body = handlers._has_body(request)
    content_length = parse_size(headers.get(CONTENT_LENGTH), CONTENT_LENGTH) if has_body else 0
    if complete and content_length is not None:  # §4.1.3: offset (0) + Content-Length is the length
        if length is not None and length != content_length:
            raise _inconsistent(f"{UPLOAD_LENGTH} {length} but the content is {content_length} bytes")
        length = content_length
    if headers.get(UPLOAD_METADATA) is not None:
        handlers._metadata(request)  # tus syntax and size limit, when a tus-minded client sends it
    metadata = creation_metadata(
        headers.get(UPLOAD_METADATA), headers.get(CONTENT_TYPE), headers.get("content-disposition")
    )
    location = ""

    def announce(upload: Upload) -> None:
        """§4.2.2: the 104 with the upload's URI, once the upload exists and before its bytes are read."""
        nonlocal location
        location = _location(request, upload.id)
        if handlers._settings(request).disable_interim_responses:
            return
        if interop.version == CURRENT_INTEROP:  # Appendix B: never for another interop version
            interim = {
                LOCATION: location,
                INTEROP_VERSION: str(CURRENT_INTEROP),
                **_limit(request, interop, upload),
            }
            send_interim(request.scope, 104, interim.items())

    body = handlers._body(request) if has_body else None
    new = NewUpload(length=length, metadata=metadata, announce=announce if body is not None else None)
    upload = await handlers._service(request).create(new, body, handlers._for_hooks(request))
    if complete and body is not None and upload.length is None and _read_whole(body, upload, 0):
        upload = await _declare_end(request, upload)  # chunked: the length is known only now
    response_headers = {
        LOCATION: location or _location(request, upload.id),  # §4.2.2: the same as in the 104
        UPLOAD_OFFSET: str(upload.offset),
        UPLOAD_COMPLETE: sf_boolean(upload.is_complete),
        **_limit(request, interop, upload),
    }
    return _respond(interop, 201, response_headers)


async def head(request: Request, interop: Interop) -> Response:
    """§4.3.2: offset, completeness, length if known, limits, `Cache-Control: no-store`; 204."""
    upload = await handlers._service(request).status(request.path_params["upload_id"])
    headers = {
        UPLOAD_OFFSET: str(upload.offset),
        UPLOAD_COMPLETE: sf_boolean(upload.is_complete),
        CACHE_CONTROL: "no-store",
        **_limit(request, interop, upload),
    }
    if upload.length is not None:
        headers[UPLOAD_LENGTH] = str(upload.length)
    return _respond(interop, 204, headers)


async def append(request: Request, interop: Interop) -> Response:
    """§4.4.2: PATCH at `Upload-Offset`; `Upload-Complete: ?1` ends the representation with it."""
    headers = request.headers
    upload_id = request.path_params["upload_id"]
    if interop.partial_upload_required:
        media_type = (headers.get(CONTENT_TYPE) or "").split(";", 1)[0].strip().lower()
        if media_type != PARTIAL_UPLOAD:
            raise UnsupportedMediaType(f"{CONTENT_TYPE} must be {PARTIAL_UPLOAD}")
    complete = require_complete(headers.get(UPLOAD_COMPLETE))
    offset = parse_integer(headers.get(UPLOAD_OFFSET), UPLOAD_OFFSET)
    if offset is None:
        raise BadRequest(f"missing or invalid {UPLOAD_OFFSET}: a non-negative integer is required")
    has_body = handlers._has_body(request)
    content_length = parse_size(headers.get(CONTENT_LENGTH), CONTENT_LENGTH) if has_body else 0
    current = await handlers._service(request).get(upload_id)
    if current.is_complete:  # §4.4.2: a completed upload is never modified
        if has_body:
            raise _inconsistent("the upload is already complete")
        raise _Problem(400, completed_upload())
    if offset != current.offset:
        raise _mismatch(current.offset, offset)
    declared = parse_integer(headers.get(UPLOAD_LENGTH), UPLOAD_LENGTH)
    if complete and content_length is not None:
        implied = offset + content_length
        if declared is not None and declared != implied:
            raise _inconsistent(f"{UPLOAD_LENGTH} {declared} but the upload would end at {implied}")
        declared = implied
    if declared is not None and current.length is not None and declared != current.length:
        raise _inconsistent(f"the upload's length is {current.length}, not {declared}")
    body = handlers._body(request)
    try:
        upload = await handlers._service(request).append(upload_id, offset, body, declared)
    except OffsetMismatch as exc:  # another request moved it meanwhile, or the lease was lost
        stored = exc.headers.get(UPLOAD_OFFSET)
        if stored is None:
            raise
        raise _mismatch(int(stored), offset) from None
    if complete and _read_whole(body, upload, offset):
        if upload.length is None:
            upload = await _declare_end(request, upload)
        elif upload.offset != upload.length:
            raise _inconsistent(f"the request ended at {upload.offset}, the length is {upload.length}")
    return _respond(
        interop, 204, {UPLOAD_OFFSET: str(upload.offset), UPLOAD_COMPLETE: sf_boolean(upload.is_complete)}
    )


async def cancel(request: Request, interop: Interop) -> Response:
    """§4.5.2: DELETE deactivates the upload (bytes and row), after any request still writing."""
    await handlers._service(request).terminate(request.path_params["upload_id"], handlers._for_hooks(request))
    return _respond(interop, 204, {})


async def _declare_end(request: Request, upload: Upload) -> Upload:
    """`Upload-Complete: ?1` without a `Content-Length`: the length is the offset the body reached."""
    ended = BodyReader(request.receive)
    ended.ended = True  # the request's body was read to its end already
    empty = Body(ended, 0, None, handlers._for_hooks(request))
    return await handlers._service(request).append(upload.id, upload.offset, empty, upload.offset)


def _read_whole(body: Body, upload: Upload, start: int) -> bool:
    """The body ended by itself and every byte of it is committed: nothing cut it short, and no
    storage or database failure was absorbed on the way (§4.4.2: an interrupted upload is not
    complete)."""
    reader = body.reader
    return reader.ended and not reader.disconnected and upload.offset - start == reader.received


def _mismatch(expected: int, provided: int) -> _Problem:
    """§4.4.2: 409 with the correct `Upload-Offset` (and `Upload-Complete: ?0`)."""
    headers = ((UPLOAD_OFFSET, str(expected)), (UPLOAD_COMPLETE, "?0"))
    return _Problem(409, mismatching_offset(expected, provided), headers)


def _inconsistent(title: str) -> _Problem:
    return _Problem(400, inconsistent_length(title))


def _location(request: Request, upload_id: str) -> str:
    return handlers._public_base(request) + handlers._settings(request).base_path + upload_id


def _limit(request: Request, interop: Interop, upload: Upload | None) -> dict[str, str]:
    """`Upload-Limit` for this version: the upload's remaining lifetime, or for discovery the lifetime
    a new upload gets."""
    settings = handlers._settings(request)
    if upload is None:
        age = settings.expire_after
    elif upload.expires_at is None:
        age = None
    else:
        age = (upload.expires_at - utcnow()).total_seconds()
    value = upload_limit(interop, settings.max_size, age)
    return {UPLOAD_LIMIT: value} if value is not None else {}


def _respond(interop: Interop, status: int, headers: dict[str, str]) -> Response:
    return Response(status_code=status, headers={**headers, INTEROP_VERSION: str(interop.version)})
