"""IETF Resumable Uploads (draft-ietf-httpbis-resumable-upload) syntax, sans I/O.

Which interop versions this server speaks and how they differ, the Structured Field values it reads
and writes (`Upload-Complete`, `Upload-Offset`, `Upload-Length`, `Upload-Limit`), the problem
documents (RFC 9457) and what creation metadata becomes in tus terms. Section numbers (§) are those
of draft -11; PROTOCOL.md §14 lists the versions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message

from tusserver.errors import BadRequest
from tusserver.protocol import encode_metadata

INTEROP_VERSION = "Upload-Draft-Interop-Version"
UPLOAD_COMPLETE = "Upload-Complete"
UPLOAD_LIMIT = "Upload-Limit"
ACCEPT_PATCH = "Accept-Patch"
PARTIAL_UPLOAD = "application/partial-upload"
PROBLEM_JSON = "application/problem+json"
CURRENT_INTEROP = 8
"""The interop version of draft -09 to -11 (Appendix B); the only one this server sends 104 for."""

_PROBLEMS = "https://iana.org/assignments/http-problem-types#"
MISMATCHING_OFFSET = "mismatching-upload-offset"
COMPLETED_UPLOAD = "completed-upload"
INCONSISTENT_LENGTH = "inconsistent-upload-length"


@dataclass(frozen=True)
class Interop:
    """One interop version and the behaviour that depends on it."""

    version: int
    partial_upload_required: bool
    """PATCH bodies must be `application/partial-upload` (since -04, interop 6)."""
    limit_age_key: str | None
    """The `Upload-Limit` key of the remaining lifetime: `expires` in -04/-05, `max-age` since -06;
    None before -04 (interop 5 has no `Upload-Limit`)."""
    problems: frozenset[str]
    """Problem types the draft version defines (§7): offset and completed since -04, length since -06."""

    @property
    def has_limits(self) -> bool:
        return self.limit_age_key is not None


SUPPORTED: dict[int, Interop] = {
    5: Interop(5, partial_upload_required=False, limit_age_key=None, problems=frozenset()),
    6: Interop(6, True, "expires", frozenset({MISMATCHING_OFFSET, COMPLETED_UPLOAD})),
    8: Interop(8, True, "max-age", frozenset({MISMATCHING_OFFSET, COMPLETED_UPLOAD, INCONSISTENT_LENGTH})),
}

_SF_INTEGER = re.compile(r"-?[0-9]{1,15}")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def interop_of(value: str | None) -> Interop | None:
    """The interop version a request asks for, if this server speaks it (None: tus 1.0 rules)."""
    if value is None:
        return None
    value = value.strip()
    if not _SF_INTEGER.fullmatch(value):
        return None
    return SUPPORTED.get(int(value))


def parse_complete(value: str | None) -> bool | None:
    """`Upload-Complete` (§4.1.2): an sf-boolean `?1` / `?0`, parameters ignored. An invalid value
    makes the field ignored, which for a request that needs it means it is missing."""
    if value is None:
        return None
    item = value.split(";", 1)[0].strip()
    return {"?1": True, "?0": False}.get(item)


def parse_integer(value: str | None, name: str) -> int | None:
    """A non-negative sf-integer item (`Upload-Offset` §4.1.1, `Upload-Length` §4.1.3); parameters are
    ignored, anything else is ignored as the draft says (None)."""
    if value is None:
        return None
    item = value.split(";", 1)[0].strip()
    if not _SF_INTEGER.fullmatch(item) or item.startswith("-"):
        return None
    return int(item)


def require_complete(value: str | None) -> bool:
    complete = parse_complete(value)
    if complete is None:
        raise BadRequest(f"{UPLOAD_COMPLETE} must be ?1 or ?0")
    return complete


def sf_boolean(value: bool) -> str:
    return "?1" if value else "?0"


def upload_limit(interop: Interop, max_size: int | None, age: float | None) -> str | None:
    """`Upload-Limit` (§4.1.4): `max-size` if the server has one, `min-size=0`, and the remaining
    lifetime in seconds if the upload expires. None for versions without the field."""
    if not interop.has_limits:
        return None
    members = ["min-size=0"]
    if max_size is not None:
        members.insert(0, f"max-size={max_size}")
    if age is not None and interop.limit_age_key is not None:
        members.append(f"{interop.limit_age_key}={max(int(age), 0)}")
    return ", ".join(members)


@dataclass(frozen=True)
class Problem:
    """An RFC 9457 problem document of one of the draft's types (§7), or a plain text fallback for a
    version that does not define the type."""

    kind: str
    title: str
    extra: Mapping[str, int]

    def body(self, interop: Interop) -> tuple[bytes, str]:
        """(content, media type) for this interop version."""
        if self.kind not in interop.problems:
            return (self.title + "\n").encode(), "text/plain; charset=utf-8"
        document = {"type": _PROBLEMS + self.kind, "title": self.title, **self.extra}
        return json.dumps(document).encode(), PROBLEM_JSON


def mismatching_offset(expected: int, provided: int) -> Problem:
    title = "offset from request does not match offset of resource"
    return Problem(MISMATCHING_OFFSET, title, {"expected-offset": expected, "provided-offset": provided})


def completed_upload() -> Problem:
    return Problem(COMPLETED_UPLOAD, "upload is already completed", {})


def inconsistent_length(title: str) -> Problem:
    return Problem(INCONSISTENT_LENGTH, title, {})


def creation_metadata(
    tus_metadata: str | None, content_type: str | None, disposition: str | None
) -> str | None:
    """tus `Upload-Metadata` for an IETF creation: the header itself if the client sent one (as
    tus-js-client does), else `filetype` from `Content-Type` and `filename` from `Content-Disposition`
    (§4.2.1 names both as representation metadata), as tusd does."""
    if tus_metadata is not None and tus_metadata.strip():
        return tus_metadata
    values: dict[str, str] = {}
    if content_type:
        media = content_type.split(";", 1)[0].strip()
        if "/" in media and all(_TOKEN.fullmatch(part) for part in media.split("/", 1)):
            values["filetype"] = media.lower()
    if disposition:
        message = Message()
        message["Content-Disposition"] = disposition
        try:
            filename = message.get_filename()
        except (ValueError, LookupError):
            filename = None
        if filename:
            values["filename"] = filename
    return encode_metadata(values)
