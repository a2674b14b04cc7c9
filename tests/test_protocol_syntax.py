"""Header syntax (tusserver.protocol), no I/O: the parsers behind every 400 the server sends."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from tusserver.core import is_upload_id, new_upload_id
from tusserver.errors import BadRequest, UnsupportedMediaType
from tusserver.protocol import (
    decode_metadata,
    format_http_date,
    metadata_text,
    parse_creation_length,
    parse_metadata,
    parse_offset,
    parse_size,
    require_offset_stream,
)


@pytest.mark.parametrize("text", ["0", "12", "007", str(2**63 - 1)])
def test_sizes_accept_plain_non_negative_integers_c_h7(text: str) -> None:
    assert parse_size(text, "Upload-Length") == int(text)


@pytest.mark.parametrize(
    "text", ["", "-1", "+5", "1.5", "abc", " 5", "5 ", "1e3", "0x10", "NaN", "-0", str(2**63), "١٢"]
)
def test_sizes_reject_everything_else_c_h7_s5(text: str) -> None:
    with pytest.raises(BadRequest, match="Upload-Length"):
        parse_size(text, "Upload-Length")


def test_missing_offset_is_a_bad_request_c_p2() -> None:
    with pytest.raises(BadRequest, match="missing Upload-Offset"):
        parse_offset(None)


def test_creation_length_and_deferral_cr3_cr4_cr5() -> None:
    assert parse_creation_length("10", None) == 10
    assert parse_creation_length(None, "1") is None
    with pytest.raises(BadRequest, match="missing"):
        parse_creation_length(None, None)
    with pytest.raises(BadRequest, match="mutually exclusive"):
        parse_creation_length("10", "1")
    for bad in ["0", "2", "+1", "yes", ""]:
        with pytest.raises(BadRequest, match="Upload-Defer-Length"):
            parse_creation_length(None, bad)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/offset+octet-stream",
        "Application/Offset+Octet-Stream",
        "application/offset+octet-stream; x=1",
    ],
)
def test_offset_stream_content_type_accepted_c_p1(content_type: str) -> None:
    require_offset_stream(content_type)


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "application/octet-stream"])
def test_other_content_types_are_415_c_p1(content_type: str | None) -> None:
    with pytest.raises(UnsupportedMediaType):
        require_offset_stream(content_type)


def test_metadata_valid_forms_m1_m2_m5() -> None:
    assert decode_metadata("filename dGVzdC50eHQ=,filetype dGV4dC9wbGFpbg==") == {
        "filename": b"test.txt",
        "filetype": b"text/plain",
    }
    assert decode_metadata("is_confidential") == {"is_confidential": b""}
    assert decode_metadata("foo aGVsbG8=, bar d29ybGQ=") == {"foo": b"hello", "bar": b"world"}


@pytest.mark.parametrize("blank", [None, "", "   "])
def test_blank_metadata_means_none_m3(blank: str | None) -> None:
    assert parse_metadata(blank) is None


def test_metadata_is_kept_as_received_m6() -> None:
    assert parse_metadata("b Yg==,a YQ==") == "b Yg==,a YQ=="


@pytest.mark.parametrize(
    "header",
    [
        "key testval-",
        "key testval*",
        "key *******",
        "key not_valid_base64!!!",
        "key dGVzdA",  # length % 4 != 0
        "key a-_b",  # URL-safe alphabet
        "k dg== extra",
        "k v,",
        "a YQ==,   ",
        "k dg==,k dg==",
        "ké dg==",
        "a,,b",
    ],
)
def test_malformed_metadata_is_rejected_m4(header: str) -> None:
    with pytest.raises(BadRequest, match="Upload-Metadata"):
        parse_metadata(header)


def test_metadata_text_replaces_undecodable_bytes() -> None:
    assert metadata_text("name /w==") == {"name": "\ufffd"}


def test_http_date_is_imf_fixdate_e4() -> None:
    moment = datetime(2014, 6, 25, 16, 0, tzinfo=UTC)
    assert format_http_date(moment) == "Wed, 25 Jun 2014 16:00:00 GMT"


def test_http_date_matches_the_standard_library_every_day_of_a_leap_year() -> None:
    """The hand-written formatter writes what `email.utils.format_datetime(usegmt=True)` writes."""
    start = datetime(2028, 1, 1, 0, 0, 7, tzinfo=UTC)
    for hours in range(0, 366 * 24, 7):
        moment = start + timedelta(hours=hours, minutes=hours % 60)
        assert format_http_date(moment) == format_datetime(moment, usegmt=True)
    other_zone = datetime(2026, 12, 3, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert format_http_date(other_zone) == "Fri, 04 Dec 2026 04:30:00 GMT"
    almost = datetime(2026, 12, 3, 23, 59, 59, 999999, tzinfo=UTC)  # a second's text, never rounded up
    assert format_http_date(almost) == format_datetime(almost, usegmt=True) == "Thu, 03 Dec 2026 23:59:59 GMT"


def test_upload_ids_are_random_128_bit_hex_and_never_repeat() -> None:
    ids = [new_upload_id() for _ in range(5_000)]  # many batches of the pre-drawn IDs
    assert all(is_upload_id(upload_id) for upload_id in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_draws_its_own_upload_ids() -> None:
    """The parent's pre-drawn IDs are not inherited: a child and its parent never share one."""
    new_upload_id()  # the parent now holds pre-drawn IDs
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next IDs and leave at once
        os.write(writing, " ".join(new_upload_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(writing)
    with os.fdopen(reading) as answer:
        child = answer.read().split()
    os.waitpid(pid, 0)
    parent = [new_upload_id() for _ in range(3)]
    assert len(child) == 3
    assert not set(child) & set(parent)
