"""What a GET download of a finished upload looks like: range, type and disposition, sans I/O.

Types from the client's `filetype` metadata are only passed on when they are on a short allow-list of
media that browsers render without running code (no HTML, no SVG); everything else is served as
`application/octet-stream` and as an attachment. File names from `filename` metadata are sanitised:
an ASCII fallback without quotes, backslashes or control characters, plus RFC 6266 / RFC 8187
`filename*` for anything else, so no header can be injected. Every download also carries
`Content-Security-Policy: sandbox` and `nosniff`, so even a file a browser renders cannot run script
in the server's origin. A finished upload never changes: it gets `ETag` and `Last-Modified`, a
private cache lifetime, and `If-None-Match` / `If-Modified-Since` answer 304.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import quote

from tusserver.core import Upload
from tusserver.errors import TusError
from tusserver.protocol import CACHE_CONTROL, format_http_date

INLINE_TYPES = frozenset(
    {
        "image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp", "image/avif",
        "audio/wav", "audio/wave", "audio/x-wav", "audio/webm", "audio/ogg", "audio/mpeg", "audio/mp4",
        "video/webm", "video/ogg", "video/mp4", "application/ogg", "application/pdf", "text/plain",
    }
)  # fmt: skip
DEFAULT_TYPE = "application/octet-stream"
DOWNLOAD_SAFETY = {"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"}
CACHE_LIFETIME = "private, max-age=3600"
"""Private: an upload may be someone's own file behind authorization; shared caches keep out."""
_RANGE = re.compile(r"bytes=(?P<start>[0-9]*)-(?P<end>[0-9]*)")
_UNSAFE_FALLBACK = re.compile(r'[^\x20-\x7e]|["\\%;]')


class RangeNotSatisfiable(TusError):
    """The `Range` lies outside the upload (416)."""

    status = 416


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # exclusive

    @property
    def length(self) -> int:
        return self.end - self.start

    def content_range(self, total: int) -> str:
        return f"bytes {self.start}-{self.end - 1}/{total}"


def parse_range(header: str | None, total: int) -> ByteRange | None:
    """One `bytes=` range of `total` bytes; None to serve everything (absent, multiple or malformed,
    which RFC 9110 lets a server ignore). Raises RangeNotSatisfiable (416)."""
    if header is None:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None or (not match["start"] and not match["end"]):
        return None
    if not match["start"]:  # suffix: the last N bytes
        suffix = int(match["end"])
        if suffix == 0 or total == 0:
            raise _unsatisfiable(total)
        return ByteRange(max(total - suffix, 0), total)
    start = int(match["start"])
    end = min(int(match["end"]) + 1, total) if match["end"] else total
    if start >= total or end <= start:
        raise _unsatisfiable(total)
    return ByteRange(start, end)


def _unsatisfiable(total: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable("range not satisfiable", {"Content-Range": f"bytes */{total}"})


def media_type(filetype: str | None) -> str:
    """The client's declared type if it is safe to serve as is, else application/octet-stream."""
    declared = (filetype or "").split(";", 1)[0].strip().lower()
    return declared if declared in INLINE_TYPES else DEFAULT_TYPE


def content_disposition(filename: str | None, media: str) -> str:
    disposition = "inline" if media in INLINE_TYPES else "attachment"
    if not filename:
        return disposition
    name = filename.replace("/", "_").replace("\\", "_")
    fallback = _UNSAFE_FALLBACK.sub("_", name) or "download"
    value = f'{disposition}; filename="{fallback}"'
    if fallback != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value


def cache_validators(upload: Upload) -> dict[str, str]:
    """`ETag`, `Last-Modified` and `Cache-Control` of a finished upload (its bytes never change)."""
    validators = {"ETag": f'"{upload.id}-{upload.offset}"', CACHE_CONTROL: CACHE_LIFETIME}
    if upload.completed_at is not None:
        validators["Last-Modified"] = format_http_date(upload.completed_at)
    return validators


def not_modified(request_headers: Mapping[str, str], validators: Mapping[str, str]) -> bool:
    """Whether a conditional GET can be answered 304 (RFC 9110 §13.1.2, §13.1.3: If-None-Match wins)."""
    if_none_match = request_headers.get("if-none-match")
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or validators["ETag"] in tags
    since = request_headers.get("if-modified-since")
    modified = validators.get("Last-Modified")
    if since is None or modified is None:
        return False
    try:
        return parsedate_to_datetime(modified) <= parsedate_to_datetime(since)
    except (TypeError, ValueError):
        return False  # an unreadable date is ignored (RFC 9110 §13.1.3)
