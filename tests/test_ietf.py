"""IETF Resumable Uploads (draft-ietf-httpbis-resumable-upload) against a real server process.

A conformance-style suite from the draft's MUST / SHOULD statements (§ numbers of draft -11; Appendix B
is "Draft Version Identification"), in raw HTTP: httpx for plain exchanges, a socket where interim
(1xx) responses must be seen or a request must break off midway. Then tus-js-client with `protocol:
'ietf-draft-03'` (interop 5) and `'ietf-draft-05'` (interop 6) uploading through a proxy that cuts
the connection mid-PATCH, and the same upload seen through tus 1.0 and the draft.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.helpers import MiB, random_file, sha256_file
from tests.netfaults import CuttingProxy
from tests.servers import ServerProcess
from tests.test_tus_js_client import node, upload_with_tus_js_client

__all__ = ["node"]  # the fixture, shared with the tus 1.0 tus-js-client tests

MAX_SIZE = 64 * MiB
PROBLEMS = "https://iana.org/assignments/http-problem-types#"


@pytest.fixture(scope="module")
def ietf_server(
    backend: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ServerProcess]:
    """One server for the module (per backend), with a size limit so that `Upload-Limit` has one."""
    root = tmp_path_factory.mktemp(f"ietf-{backend}")
    if backend == "sqlite":
        url = f"sqlite:///{root / 'tusserver.db'}"
    else:
        url = request.getfixturevalue("postgres_database")
    process = ServerProcess(root / "data", url, ["--max-size", str(MAX_SIZE)])
    process.start()
    yield process
    process.stop()


def draft(version: int = 8, **headers: str) -> dict[str, str]:
    sent = {"Upload-Draft-Interop-Version": str(version)}
    sent.update({key.replace("_", "-"): value for key, value in headers.items()})
    return sent


def stored(server: ServerProcess, url: str) -> bytes:
    return (server.data_dir / "uploads" / url.rstrip("/").rsplit("/", 1)[1]).read_bytes()


def create(server: ServerProcess, version: int = 8, body: bytes = b"", **headers: str) -> httpx.Response:
    sent = draft(version, Upload_Complete="?0", **headers)
    response = httpx.post(server.url, headers=sent, content=body)
    assert response.status_code == 201, response.text
    return response


def append(
    url: str, offset: int, body: bytes, complete: bool, version: int = 8, **headers: str
) -> httpx.Response:
    sent = draft(
        version,
        Upload_Offset=str(offset),
        Upload_Complete="?1" if complete else "?0",
        Content_Type="application/partial-upload",
    )
    sent.update({key.replace("_", "-"): value for key, value in headers.items()})
    return httpx.patch(url, headers=sent, content=body)


def head(url: str, version: int = 8) -> httpx.Response:
    return httpx.head(url, headers=draft(version))


def limit(response: httpx.Response) -> dict[str, str]:
    """`Upload-Limit` as a dict (the server writes plain integer members)."""
    members = (member.strip().partition("=") for member in response.headers["Upload-Limit"].split(","))
    return {key: value for key, _, value in members}


# Raw HTTP/1.1, to see interim responses and to break a request off.


@dataclass
class Exchange:
    interim: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def _read_head(sock: socket.socket, buffer: bytearray) -> tuple[int, dict[str, str]]:
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {bytes(buffer)!r}")
        buffer.extend(chunk)
    end = buffer.index(b"\r\n\r\n")
    lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    del buffer[: end + 4]
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def raw_request(port: int, head_text: str, body: bytes = b"", wait_for_continue: bool = False) -> Exchange:
    """Send one request on a new connection; every interim response, then the final one."""
    exchange = Exchange()
    buffer = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(head_text.replace("\n", "\r\n").encode() + b"\r\n")
        if wait_for_continue:
            while not any(status == 100 for status, _ in exchange.interim):
                exchange.interim.append(_read_head(sock, buffer))
        sock.sendall(body)
        while True:
            status, headers = _read_head(sock, buffer)
            if status >= 200:
                break
            exchange.interim.append((status, headers))
        length = int(headers.get("content-length", "0"))
        while len(buffer) < length:
            buffer.extend(sock.recv(65536))
    exchange.status, exchange.headers, exchange.body = status, headers, bytes(buffer[:length])
    return exchange


def post_head(server: ServerProcess, version: int, length: int, *extra: str) -> str:
    lines = [
        "POST /files/ HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        f"Upload-Draft-Interop-Version: {version}",
        "Upload-Complete: ?1",
        f"Content-Length: {length}",
        *extra,
    ]
    return "\n".join(lines) + "\n"


# Creation (§4.2) and the 104 (§5, Appendix B)


def test_creation_with_all_content_sends_104_with_location_limits_and_interop_version_then_201(
    ietf_server: ServerProcess,
) -> None:
    """§4.2.2: SHOULD 104 with `Location` (MUST) and `Upload-Limit` (MUST, limits exist); Appendix B:
    the 104 carries `Upload-Draft-Interop-Version: 8`; §4.2.2: the final response's `Location` is the
    104's; §4.1.3: `Upload-Complete: ?1` + `Content-Length` fix the length."""
    content = b"hello world"
    exchange = raw_request(ietf_server.port, post_head(ietf_server, 8, len(content)), content)
    assert [status for status, _ in exchange.interim] == [104]
    interim = exchange.interim[0][1]
    assert interim["upload-draft-interop-version"] == "8"
    assert interim["location"].startswith(ietf_server.url)
    assert f"max-size={MAX_SIZE}" in interim["upload-limit"]
    assert exchange.status == 201
    assert exchange.headers["location"] == interim["location"]
    assert exchange.headers["upload-complete"] == "?1"
    assert "tus-resumable" not in exchange.headers
    assert stored(ietf_server, interim["location"]) == content
    status = head(interim["location"])
    assert status.headers["Upload-Complete"] == "?1"
    assert status.headers["Upload-Length"] == status.headers["Upload-Offset"] == str(len(content))


@pytest.mark.parametrize("version", [5, 6])
def test_no_104_for_an_older_interop_version(ietf_server: ServerProcess, version: int) -> None:
    """Appendix B: a server MUST NOT send 104 when the request's interop version differs from its own
    (8); the older versions still create the upload."""
    exchange = raw_request(ietf_server.port, post_head(ietf_server, version, 5), b"12345")
    assert exchange.interim == []
    assert exchange.status == 201
    assert stored(ietf_server, exchange.headers["location"]) == b"12345"


def test_no_104_with_disable_interim_responses(tmp_path: Path) -> None:
    """`--disable-interim-responses` (for a proxy that mishandles 1xx): the draft allows a server that
    sends none (§4.2.2); creation works the same."""
    process = ServerProcess(
        tmp_path / "data", f"sqlite:///{tmp_path / 'db.sqlite'}", ["--disable-interim-responses"]
    )
    process.start()
    try:
        exchange = raw_request(process.port, post_head(process, 8, 3), b"abc")
    finally:
        process.stop()
    assert exchange.interim == []
    assert (exchange.status, exchange.headers["upload-complete"]) == (201, "?1")


def test_a_104_never_replaces_100_continue(ietf_server: ServerProcess) -> None:
    """§5: the server MUST NOT omit `100 (Continue)` because it sent a 104."""
    text = post_head(ietf_server, 8, 4, "Expect: 100-continue")
    exchange = raw_request(ietf_server.port, text, b"abcd", wait_for_continue=True)
    assert [status for status, _ in exchange.interim] == [104, 100]
    assert exchange.status == 201
    assert stored(ietf_server, exchange.headers["location"]) == b"abcd"


def test_creation_without_content_answers_201_with_location_and_limits(ietf_server: ServerProcess) -> None:
    """§4.2.2: `Upload-Complete: ?0` fully processed: MUST `Location`, MUST `Upload-Limit`,
    RECOMMENDED 201; a draft request is not held to tus 1.0's `Tus-Resumable`."""
    response = create(ietf_server, Upload_Length="100")
    assert response.headers["Location"].startswith(ietf_server.url)
    assert response.headers["Upload-Complete"] == "?0"
    assert response.headers["Upload-Offset"] == "0"
    limits = limit(response)
    assert limits["max-size"] == str(MAX_SIZE)
    assert limits["min-size"] == "0"
    assert 0 < int(limits["max-age"]) <= 24 * 3600
    assert "Tus-Resumable" not in response.headers


def test_inconsistent_length_on_creation_is_refused_with_the_problem_type(ietf_server: ServerProcess) -> None:
    """§4.1.3: `Upload-Length` and `Upload-Complete: ?1` + `Content-Length` MUST match; §7.3: the
    problem type `inconsistent-upload-length` (400, application/problem+json)."""
    sent = draft(Upload_Complete="?1", Upload_Length="999999")
    response = httpx.post(ietf_server.url, headers=sent, content=b"hello world")
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.json()["type"] == PROBLEMS + "inconsistent-upload-length"


def test_upload_complete_must_be_a_structured_boolean(ietf_server: ServerProcess) -> None:
    """§4.1.2: a value other than an sf-boolean is ignored: the creation then lacks the field (400)."""
    response = httpx.post(ietf_server.url, headers=draft(Upload_Complete="yes"))
    assert response.status_code == 400


def test_creation_over_the_size_limit_is_413_with_upload_limit(ietf_server: ServerProcess) -> None:
    """§4.1.4: a 413 caused by the server's limits MUST carry `Upload-Limit`."""
    response = httpx.post(
        ietf_server.url, headers=draft(Upload_Complete="?0", Upload_Length=str(MAX_SIZE + 1))
    )
    assert response.status_code == 413
    assert limit(response)["max-size"] == str(MAX_SIZE)


def test_options_announces_partial_upload_patches_and_limits(ietf_server: ServerProcess) -> None:
    """§4.1.4 (-11): OPTIONS on a resource that creates uploads MUST include `Accept-Patch` with
    `application/partial-upload`; `Upload-Limit` SHOULD be there when limits apply."""
    response = httpx.options(ietf_server.url, headers=draft())
    assert response.status_code == 200
    assert "application/partial-upload" in response.headers["Accept-Patch"]
    assert limit(response)["max-size"] == str(MAX_SIZE)


# Offset retrieval (§4.3) and append (§4.4)


def test_head_reports_offset_completeness_length_limits_and_no_store(ietf_server: ServerProcess) -> None:
    """§4.3.2: MUST `Upload-Offset`, `Upload-Complete`, `Upload-Length` (known), `Upload-Limit`;
    SHOULD `Cache-Control: no-store`."""
    url = create(ietf_server, body=b"0123456789", Upload_Length="100").headers["Location"]
    response = head(url)
    assert response.status_code == 204
    assert response.headers["Upload-Offset"] == "10"
    assert response.headers["Upload-Complete"] == "?0"
    assert response.headers["Upload-Length"] == "100"
    assert response.headers["Cache-Control"] == "no-store"
    assert int(limit(response)["max-age"]) > 0


def test_appends_then_complete_make_the_bytes_and_upload_complete(ietf_server: ServerProcess) -> None:
    """§4.4.2: `Upload-Complete: ?0` fully processed -> 2xx with `Upload-Complete: ?0`; `?1` -> complete,
    and the response MUST include `Upload-Complete: ?1`. §4.1.3: the length is offset + Content-Length."""
    url = create(ietf_server).headers["Location"]
    first = append(url, 0, b"hello ", complete=False)
    assert first.status_code == 204
    assert first.headers["Upload-Complete"] == "?0"
    last = append(url, 6, b"world", complete=True)
    assert last.status_code == 204
    assert last.headers["Upload-Complete"] == "?1"
    assert stored(ietf_server, url) == b"hello world"
    assert head(url).headers["Upload-Length"] == "11"


def test_reaching_a_known_length_completes_the_upload(ietf_server: ServerProcess) -> None:
    """One state for both protocols: an upload whose offset reaches its `Upload-Length` is complete
    (as in tus 1.0), even if that request said `Upload-Complete: ?0` (§4.1.3 would let it stay open)."""
    response = create(ietf_server, body=b"abc", Upload_Length="3")
    assert response.headers["Upload-Complete"] == "?1"
    assert head(response.headers["Location"]).headers["Upload-Complete"] == "?1"


def test_completing_with_a_chunked_body_takes_the_length_from_the_offset(ietf_server: ServerProcess) -> None:
    """§4.1.3 / §4.4.2: `Upload-Complete: ?1` without `Content-Length`: the upload ends where the
    body ends."""
    url = create(ietf_server).headers["Location"]
    response = append(url, 0, iter([b"abc", b"def"]), complete=True)  # type: ignore[arg-type]
    assert response.status_code == 204
    assert response.headers["Upload-Complete"] == "?1"
    status = head(url)
    assert status.headers["Upload-Length"] == status.headers["Upload-Offset"] == "6"
    assert stored(ietf_server, url) == b"abcdef"


def test_creation_with_a_chunked_body_and_upload_complete_takes_its_length_from_the_body(
    ietf_server: ServerProcess,
) -> None:
    """§4.1.3: `Upload-Complete: ?1` without `Content-Length` (chunked): the length is where it ends."""
    sent = draft(Upload_Complete="?1")
    response = httpx.post(ietf_server.url, headers=sent, content=iter([b"chunk one, ", b"chunk two"]))
    assert response.status_code == 201
    assert response.headers["Upload-Complete"] == "?1"
    url = response.headers["Location"]
    assert head(url).headers["Upload-Length"] == "20"
    assert stored(ietf_server, url) == b"chunk one, chunk two"


def test_an_empty_append_with_upload_complete_ends_an_upload_of_unknown_length(
    ietf_server: ServerProcess,
) -> None:
    """§4.4.1: `Upload-Complete: ?1` with no content completes an upload whose data all arrived."""
    url = create(ietf_server).headers["Location"]
    assert "Upload-Length" not in head(url).headers
    assert append(url, 0, b"abc", complete=False).headers["Upload-Complete"] == "?0"
    done = append(url, 3, b"", complete=True)
    assert (done.status_code, done.headers["Upload-Complete"]) == (204, "?1")
    status = head(url)
    assert (status.headers["Upload-Complete"], status.headers["Upload-Length"]) == ("?1", "3")


@pytest.mark.parametrize("version", [6, 8])
def test_a_wrong_offset_is_409_with_the_offset_and_the_problem(
    ietf_server: ServerProcess, version: int
) -> None:
    """§4.4.2: MUST 409 with the correct `Upload-Offset`; §7.1 `mismatching-upload-offset` SHOULD fill
    `expected-offset` and `provided-offset` (defined since -04, interop 6)."""
    url = create(ietf_server, version, body=b"12345").headers["Location"]
    response = append(url, 3, b"xyz", complete=False, version=version)
    assert response.status_code == 409
    assert response.headers["Upload-Offset"] == "5"
    assert response.headers["Upload-Complete"] == "?0"
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = json.loads(response.content)
    assert problem["type"] == PROBLEMS + "mismatching-upload-offset"
    assert (problem["expected-offset"], problem["provided-offset"]) == (5, 3)
    assert stored(ietf_server, url) == b"12345"


def test_interop_5_has_no_problem_documents_nor_upload_limit(ietf_server: ServerProcess) -> None:
    """Draft -03 (interop 5) predates problem types and `Upload-Limit`: 409 in plain text."""
    response = create(ietf_server, 5, body=b"12345")
    assert "Upload-Limit" not in response.headers
    conflict = append(response.headers["Location"], 0, b"x", complete=False, version=5)
    assert conflict.status_code == 409
    assert conflict.headers["Upload-Offset"] == "5"
    assert conflict.headers["Content-Type"].startswith("text/plain")


def test_interop_6_names_the_lifetime_expires(ietf_server: ServerProcess) -> None:
    """Drafts -04/-05 (interop 6) call the lifetime limit `expires`; -06 renamed it `max-age`."""
    response = create(ietf_server, 6)
    limits = limit(response)
    assert "expires" in limits
    assert "max-age" not in limits


@pytest.mark.parametrize(("version", "status"), [(8, 415), (6, 415), (5, 204)])
def test_partial_upload_media_type_is_required_from_interop_6(
    ietf_server: ServerProcess, version: int, status: int
) -> None:
    """§4.4.1 / §6: an append is `application/partial-upload` (required since -04, interop 6)."""
    url = create(ietf_server, version).headers["Location"]
    response = append(
        url, 0, b"abc", complete=False, version=version, Content_Type="application/octet-stream"
    )
    assert response.status_code == status


def test_a_completed_upload_is_never_modified(ietf_server: ServerProcess) -> None:
    """§4.4.2 (-11): appending to a completed upload MUST NOT modify it and MUST be rejected: content
    -> inconsistent length; no content -> `completed-upload` (§7.2)."""
    url = create(ietf_server).headers["Location"]
    assert append(url, 0, b"done", complete=True).status_code == 204
    more = append(url, 4, b"more", complete=True)
    assert more.status_code == 400
    assert more.json()["type"] == PROBLEMS + "inconsistent-upload-length"
    empty = append(url, 4, b"", complete=True)
    assert empty.status_code == 400
    assert empty.json()["type"] == PROBLEMS + "completed-upload"
    assert stored(ietf_server, url) == b"done"


def test_a_length_change_is_refused_as_inconsistent(ietf_server: ServerProcess) -> None:
    """§4.1.3: indicated lengths of several requests MUST match."""
    url = create(ietf_server, Upload_Length="10").headers["Location"]
    response = append(url, 0, b"abc", complete=True)
    assert response.status_code == 400
    assert response.json()["type"] == PROBLEMS + "inconsistent-upload-length"
    assert head(url).headers["Upload-Offset"] == "0"


def test_an_interrupted_append_keeps_its_bytes_is_not_complete_and_resumes(
    ietf_server: ServerProcess,
) -> None:
    """§4.4.2: SHOULD append as much as possible of an interrupted PATCH, which MUST NOT complete the
    upload; §4.6: the offset HEAD returns MUST be accepted by the next append."""
    url = create(ietf_server, Upload_Length=str(2 * MiB)).headers["Location"]
    content = os.urandom(2 * MiB)
    lines = [
        f"PATCH {httpx.URL(url).path} HTTP/1.1",
        f"Host: 127.0.0.1:{ietf_server.port}",
        "Upload-Draft-Interop-Version: 8",
        "Upload-Offset: 0",
        "Upload-Complete: ?1",
        "Content-Type: application/partial-upload",
        f"Content-Length: {len(content)}",
    ]
    with socket.create_connection(("127.0.0.1", ietf_server.port), timeout=20) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + content[: MiB + 12345])
        deadline = time.monotonic() + 20
        while int(head(url).headers["Upload-Offset"]) < MiB and time.monotonic() < deadline:
            time.sleep(0.05)  # poll: the server commits what arrives (checkpoint or HEAD's takeover)
    status = head(url)
    offset = int(status.headers["Upload-Offset"])
    assert 0 < offset <= MiB + 12345
    assert status.headers["Upload-Complete"] == "?0"
    resumed = append(url, offset, content[offset:], complete=True)
    assert resumed.status_code == 204, resumed.text
    assert resumed.headers["Upload-Complete"] == "?1"
    assert stored(ietf_server, url) == content


# Cancellation (§4.5) and the two protocols on one upload


def test_delete_deactivates_the_upload(ietf_server: ServerProcess) -> None:
    """§4.5.2: the server SHOULD deactivate the upload resource."""
    url = create(ietf_server, body=b"abc").headers["Location"]
    response = httpx.delete(url, headers=draft())
    assert response.status_code == 204
    assert head(url).status_code == 404
    assert not (ietf_server.data_dir / "uploads" / url.rsplit("/", 1)[1]).exists()


def test_an_upload_is_one_resource_for_both_protocols(ietf_server: ServerProcess) -> None:
    """Created with the draft, continued and inspected with tus 1.0, finished with the draft; the
    draft's representation metadata (`Content-Type`, `Content-Disposition`) becomes tus metadata."""
    created = create(
        ietf_server, body=b"abc", Upload_Length="9", Content_Type="text/plain",
        Content_Disposition="inline; filename=\"notes.txt\"",
    )  # fmt: skip
    url = created.headers["Location"]
    tus = {"Tus-Resumable": "1.0.0"}
    status = httpx.head(url, headers=tus)
    assert status.status_code == 200
    assert (status.headers["Upload-Offset"], status.headers["Upload-Length"]) == ("3", "9")
    assert "filename bm90ZXMudHh0" in status.headers["Upload-Metadata"]  # notes.txt
    assert "filetype dGV4dC9wbGFpbg==" in status.headers["Upload-Metadata"]  # text/plain
    sent = {**tus, "Upload-Offset": "3", "Content-Type": "application/offset+octet-stream"}
    assert httpx.patch(url, headers=sent, content=b"def").status_code == 204
    assert head(url).headers["Upload-Offset"] == "6"
    assert append(url, 6, b"ghi", complete=True).headers["Upload-Complete"] == "?1"
    assert httpx.head(url, headers=tus).headers["Upload-Offset"] == "9"
    assert httpx.get(url).content == b"abcdefghi"


def test_a_tus_upload_is_seen_and_finished_with_the_draft(ietf_server: ServerProcess) -> None:
    tus = {"Tus-Resumable": "1.0.0"}
    url = httpx.post(ietf_server.url, headers={**tus, "Upload-Length": "6"}).headers["Location"]
    sent = {**tus, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    assert httpx.patch(url, headers=sent, content=b"abc").status_code == 204
    status = head(url)
    assert (status.status_code, status.headers["Upload-Offset"], status.headers["Upload-Complete"]) == (
        204,
        "3",
        "?0",
    )
    assert append(url, 3, b"def", complete=True).headers["Upload-Complete"] == "?1"
    assert httpx.head(url, headers=tus).headers["Upload-Offset"] == "6"
    assert stored(ietf_server, url) == b"abcdef"


def test_no_interim_response_to_an_http_1_0_request(ietf_server: ServerProcess) -> None:
    """RFC 9110 §15.2: a server must not send a 1xx to an HTTP/1.0 client."""
    text = post_head(ietf_server, 8, 3).replace("HTTP/1.1", "HTTP/1.0", 1)
    exchange = raw_request(ietf_server.port, text, b"abc")
    assert exchange.interim == []
    assert exchange.status == 201


@pytest.mark.parametrize("version", ["3", "4", "7", "x"])
def test_tus_requests_are_unaffected(ietf_server: ServerProcess, version: str) -> None:
    """Without a supported interop version the tus 1.0 rules hold: 412 without `Tus-Resumable`
    (interop 3, 4 and 7 are not spoken), `Tus-Resumable` on answers, no draft fields."""
    refused = httpx.post(
        ietf_server.url, headers={"Upload-Draft-Interop-Version": version, "Upload-Length": "1"}
    )
    assert refused.status_code == 412
    created = httpx.post(ietf_server.url, headers={"Tus-Resumable": "1.0.0", "Upload-Length": "1"})
    assert created.status_code == 201
    assert created.headers["Tus-Resumable"] == "1.0.0"
    assert "Upload-Complete" not in created.headers
    assert "Upload-Limit" not in created.headers


# tus-js-client speaking the draft, with interruptions


@pytest.mark.parametrize(("protocol", "version"), [("ietf-draft-03", 5), ("ietf-draft-05", 6)])
def test_tus_js_client_ietf_protocol_resumes_through_cut_connections(
    ietf_server: ServerProcess, node: str, tmp_path: Path, protocol: str, version: int
) -> None:
    """tus-js-client with `protocol: '<draft>'` uploads 12 MiB in 5 MiB PATCHes while a proxy resets
    the connection in the middle of the second one: it asks HEAD for the offset and resumes; the
    stored file is byte-identical and the upload complete for both protocols."""
    source = random_file(tmp_path / "movie.bin", 12 * MiB)
    proxy = CuttingProxy(ietf_server.port, cut_after=7 * MiB)
    try:
        url = upload_with_tus_js_client(node, proxy.url, source, 5 * MiB, 1, protocol)
    finally:
        proxy.close()
    assert proxy.cut.is_set()
    upload_id = url.rstrip("/").rsplit("/", 1)[1]
    direct = ietf_server.url + upload_id
    status = head(direct, version)
    assert status.headers["Upload-Complete"] == "?1"
    assert status.headers["Upload-Offset"] == str(12 * MiB)
    assert sha256_file(ietf_server.data_dir / "uploads" / upload_id) == sha256_file(source)
