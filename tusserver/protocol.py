"""tus 1.0 header syntax, sans I/O: names, parsers and formatters.

Every rule about what a header value may look like lives here and nowhere else (PROTOCOL.md §1-§5).
Parsers take the raw header value (or None when absent) and either return a typed value or raise the
`TusError` the spec implies. No Starlette, no database, no storage.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from tusserver.errors import BadRequest, UnsupportedMediaType

TUS_VERSION = "1.0.0"

TUS_RESUMABLE = "Tus-Resumable"
TUS_VERSION_HEADER = "Tus-Version"
TUS_EXTENSION = "Tus-Extension"
TUS_MAX_SIZE = "Tus-Max-Size"
UPLOAD_OFFSET = "Upload-Offset"
UPLOAD_LENGTH = "Upload-Length"
UPLOAD_DEFER_LENGTH = "Upload-Defer-Length"
UPLOAD_METADATA = "Upload-Metadata"
UPLOAD_CONCAT = "Upload-Concat"
UPLOAD_EXPIRES = "Upload-Expires"
UPLOAD_CHECKSUM = "Upload-Checksum"
TUS_CHECKSUM_ALGORITHM = "Tus-Checksum-Algorithm"
METHOD_OVERRIDE = "X-HTTP-Method-Override"
CONTENT_TYPE = "Content-Type"
CONTENT_LENGTH = "Content-Length"
CACHE_CONTROL = "Cache-Control"
LOCATION = "Location"

OFFSET_OCTET_STREAM = "application/offset+octet-stream"

EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "checksum",
    "expiration",
    "concatenation",
)
OPTIONAL_EXTENSIONS = frozenset({"concatenation"})
"""Extensions a storage backend must declare in `Storage.capabilities` to have them advertised."""


def extensions_for(capabilities: frozenset[str]) -> tuple[str, ...]:
    """`Tus-Extension` for a backend with these capabilities, in the canonical order."""
    return tuple(name for name in EXTENSIONS if name not in OPTIONAL_EXTENSIONS or name in capabilities)


# Digest sizes in bytes; crc32 is left out on purpose: its encoding is not standardised (K-11).
CHECKSUM_ALGORITHMS = {"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64}
_BASE64_ALPHABET = re.compile(r"[A-Za-z0-9+/]*={0,2}")

MAX_INT64 = 2**63 - 1
_DIGITS = re.compile(r"[0-9]+")
# Keys: printable ASCII without space or comma (SPEC: "MUST NOT contain spaces and commas").
_METADATA_KEY = re.compile(r"[!-+\--~]+")


def parse_size(value: str | None, header: str) -> int | None:
    """A non-negative integer header (`Upload-Offset`, `Upload-Length`); None when absent (C-H7)."""
    if value is None:
        return None
    if not _DIGITS.fullmatch(value):
        raise BadRequest(f"invalid {header}: expected a non-negative integer")
    number = int(value)
    if number > MAX_INT64:
        raise BadRequest(f"invalid {header}: larger than 2^63-1")
    return number


def parse_offset(value: str | None) -> int:
    """`Upload-Offset` on PATCH: required and a non-negative integer (C-P2)."""
    offset = parse_size(value, UPLOAD_OFFSET)
    if offset is None:
        raise BadRequest(f"missing {UPLOAD_OFFSET}")
    return offset


def parse_creation_length(length: str | None, defer: str | None) -> int | None:
    """`Upload-Length` / `Upload-Defer-Length` on POST; None means deferred (CR-3, CR-4, CR-5)."""
    if defer is not None:
        if defer != "1":
            raise BadRequest(f"invalid {UPLOAD_DEFER_LENGTH}: the only allowed value is 1")
        if length is not None:
            raise BadRequest(f"{UPLOAD_LENGTH} and {UPLOAD_DEFER_LENGTH} are mutually exclusive")
        return None
    parsed = parse_size(length, UPLOAD_LENGTH)
    if parsed is None:
        raise BadRequest(f"missing {UPLOAD_LENGTH} or {UPLOAD_DEFER_LENGTH}: 1")
    return parsed


def require_offset_stream(content_type: str | None) -> None:
    """A body must be sent as `application/offset+octet-stream` (C-P1, CU-2)."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != OFFSET_OCTET_STREAM:
        raise UnsupportedMediaType(f"{CONTENT_TYPE} must be {OFFSET_OCTET_STREAM}")


def parse_metadata(value: str | None) -> str | None:
    """Validate `Upload-Metadata`; returns the header to store and echo, None if there is none.

    Strict (M-4): every value is padded standard base64, keys are unique printable ASCII. An empty or
    blank header means no metadata (M-3: tuspy always sends one). Spaces around commas are tolerated
    (M-5) and the header is kept as received, so HEAD echoes it byte for byte (M-6).
    """
    if value is None or not value.strip():
        return None
    decode_metadata(value)
    return value.strip()


def decode_metadata(value: str | None) -> dict[str, bytes]:
    """Decode a validated or raw `Upload-Metadata` header into key -> value bytes."""
    pairs: dict[str, bytes] = {}
    if value is None or not value.strip():
        return pairs
    for pair in value.split(","):
        key, encoded = _split_pair(pair.strip())
        if key in pairs:
            raise BadRequest(f"invalid {UPLOAD_METADATA}: duplicate key {key!r}")
        pairs[key] = _decode_base64(key, encoded)
    return pairs


def _split_pair(pair: str) -> tuple[str, str]:
    parts = pair.split(" ")
    if len(parts) > 2:
        raise BadRequest(f"invalid {UPLOAD_METADATA}: a pair has more than a key and a value")
    key = parts[0]
    if not _METADATA_KEY.fullmatch(key):
        raise BadRequest(f"invalid {UPLOAD_METADATA}: keys must be non-empty printable ASCII")
    return key, parts[1] if len(parts) == 2 else ""


def _decode_base64(key: str, encoded: str) -> bytes:
    try:  # strict: the standard alphabet, padded, nothing after the padding (one C call)
        return binascii.a2b_base64(encoded.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise BadRequest(f"invalid {UPLOAD_METADATA}: value of {key!r} is not base64") from None


def metadata_text(value: str | None) -> dict[str, str]:
    """Decoded metadata as text, for hooks and logs; undecodable bytes are replaced."""
    return {key: raw.decode("utf-8", "replace") for key, raw in decode_metadata(value).items()}


def encode_metadata(values: Mapping[str, str]) -> str | None:
    """Text metadata (what a hook may set) as an `Upload-Metadata` header; None for none."""
    pairs = [
        f"{key} {base64.b64encode(value.encode()).decode()}" if value else key
        for key, value in values.items()
    ]
    return ",".join(pairs) or None


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("", "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def format_http_date(moment: datetime) -> str:
    """IMF-fixdate, as `Upload-Expires` requires (E-4): what `email.utils.format_datetime(...,
    usegmt=True)` writes, at a fraction of its cost (it is on every POST, PATCH and HEAD answer)."""
    return _imf_fixdate(math.floor(moment.timestamp()))


@functools.lru_cache(maxsize=256)
def _imf_fixdate(seconds: int) -> str:
    """Per whole second: the uploads created or written in one second share their expiry's text."""
    t = time.gmtime(seconds)
    return (
        f"{_WEEKDAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


@dataclass(frozen=True)
class Checksum:
    """A parsed `Upload-Checksum`; `digest` is None when the value cannot match (wrong length, K-5)."""

    algorithm: str
    digest: bytes | None

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)


def parse_checksum(value: str | None) -> Checksum | None:
    """`Upload-Checksum: <algorithm> <base64 digest>` (K-3, K-4, K-9)."""
    if value is None:
        return None
    algorithm, _, encoded = value.strip().partition(" ")
    if algorithm not in CHECKSUM_ALGORITHMS:
        supported = ",".join(CHECKSUM_ALGORITHMS)
        raise BadRequest(
            f"unsupported {UPLOAD_CHECKSUM} algorithm {algorithm[:20]!r}: use one of {supported}"
        )
    if not encoded or not _BASE64_ALPHABET.fullmatch(encoded):
        raise BadRequest(f"invalid {UPLOAD_CHECKSUM}: the digest must be base64")
    try:
        digest: bytes | None = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        digest = None  # base64 letters but broken padding: a digest that cannot match -> 460
    if digest is not None and len(digest) != CHECKSUM_ALGORITHMS[algorithm]:
        digest = None
    return Checksum(algorithm, digest)


@dataclass(frozen=True)
class Concat:
    """A parsed `Upload-Concat`: a partial upload, or a final one made of `parts` (upload IDs)."""

    header: str
    parts: tuple[str, ...] = ()

    @property
    def is_final(self) -> bool:
        return bool(self.parts)


def parse_concat(value: str | None) -> Concat | None:
    """`partial` or `final;<url> <url> ...` with absolute or relative URLs (X-2, X-3, X-12, X-13)."""
    if value is None:
        return None
    value = value.strip()
    if value == "partial":
        return Concat(value)
    kind, separator, urls = value.partition(";")
    if kind != "final" or not separator or not urls.strip():
        raise BadRequest(f"invalid {UPLOAD_CONCAT}: expected 'partial' or 'final;<url> <url> ...'")
    return Concat(value, tuple(_upload_id_of(url) for url in urls.split()))


def _upload_id_of(url: str) -> str:
    """The last path segment of an upload URL; IDs are checked against the ID pattern later."""
    try:
        path = urlsplit(url).path.rstrip("/")
    except ValueError:  # e.g. "http://[::1" (an unclosed IPv6 literal)
        raise BadRequest(f"invalid {UPLOAD_CONCAT}: {url[:80]!r} is not a URL") from None
    upload_id = path.rsplit("/", 1)[-1]
    if not upload_id:
        raise BadRequest(f"invalid {UPLOAD_CONCAT}: {url[:80]!r} is not an upload URL")
    return upload_id
