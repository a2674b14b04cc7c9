"""The pre-finish hook (issue 9, point 3): a receiver that scans a complete upload before it counts.

A refusal leaves the upload complete but rejected: the finishing PATCH gets the hook's status and
body, HEAD, GET and a retried PATCH get the same, no post-finish is ever sent, DELETE still frees it
and its post-terminate says it was rejected. A hook that cannot be reached commits nothing of the
finishing body (503), and the client's retry completes it. Uploads complete at birth (empty ones,
assembled finals) and creation-with-upload are refused whole: nothing is created."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import AppClient
from tests.helpers import BASE, create, patch, upload_ids
from tests.hook_receiver import HookReceiver
from tests.servers import ServerProcess
from tusserver import HookEvent, HookRejected, Settings, create_app

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}
EVENTS = "pre-create,pre-finish,post-finish,post-terminate"
SIGNATURE = b"X5O!P%@AP"  # the start of the EICAR test string: what the "virus scanner" looks for


def _scanner(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A tusd-style receiver: pre-create names the owner; pre-finish reads the stored file and
    refuses it when it carries the signature."""
    upload = request["Event"]["Upload"]
    if request["Type"] == "pre-create":
        return 200, {"ChangeFileInfo": {"Owner": "alice"}}
    if request["Type"] == "pre-finish":
        content = Path(upload["Storage"]["Path"]).read_bytes()
        assert len(content) == upload["Offset"] == upload["Size"]  # every byte is there when it asks
        if SIGNATURE in content:
            response = {"StatusCode": 422, "Body": "infected: EICAR", "Header": {"X-Scan": "eicar"}}
            return 200, {"RejectUpload": True, "HTTPResponse": response}
    return 200, {}


@pytest.fixture
def scanner() -> Iterator[HookReceiver]:
    receiver = HookReceiver(_scanner)
    yield receiver
    receiver.close()


def _wait_until(condition: Any, within: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {within} s"
        time.sleep(0.05)


def _new(server: ServerProcess, length: int) -> str:
    created = httpx.post(server.url, headers={**TUS, "Upload-Length": str(length)})
    assert created.status_code == 201, created.text
    return str(created.headers["Location"])


def _patch(url: str, offset: int, data: bytes) -> httpx.Response:
    return httpx.patch(url, content=data, headers={**OCTETS, "Upload-Offset": str(offset)})


def test_a_refused_upload_stays_complete_but_rejected(
    tmp_path: Path, database_url: str, scanner: HookReceiver
) -> None:
    flags = ["--hooks-http", scanner.url, "--hooks-enabled-events", EVENTS, "--hooks-backoff-max", "1"]
    server = ServerProcess(tmp_path / "data", database_url, extra_args=flags)
    server.start()
    try:
        clean = _new(server, 10)
        assert _patch(clean, 0, b"hello").status_code == 204  # not complete: no pre-finish yet
        assert scanner.of_type("pre-finish") == []
        assert _patch(clean, 5, b"world").status_code == 204
        assert httpx.get(clean).content == b"helloworld"

        bad_data = b"12345" + SIGNATURE + b"67890"
        bad = _new(server, len(bad_data))
        assert _patch(bad, 0, bad_data[:5]).status_code == 204
        refused = _patch(bad, 5, bad_data[5:])
        assert (refused.status_code, refused.text.strip()) == (422, "infected: EICAR")
        assert refused.headers["X-Scan"] == "eicar"
        assert refused.headers["Upload-Offset"] == str(len(bad_data))
        head = httpx.head(bad, headers=TUS)  # a resuming client learns it was refused, not "done"
        assert head.status_code == 422
        assert (head.headers["Upload-Offset"], head.headers["Upload-Length"]) == (str(len(bad_data)),) * 2
        download = httpx.get(bad)  # a refused file is never served
        assert (download.status_code, download.text.strip()) == (422, "infected: EICAR")
        assert _patch(bad, len(bad_data), b"").status_code == 422  # nor completed by a retry
        assert httpx.delete(bad, headers=TUS).status_code == 204

        bad_id = bad.rsplit("/", 1)[1]

        def terminated_events() -> list[Any]:
            return [event for event in scanner.of_type("post-terminate") if event.upload["ID"] == bad_id]

        _wait_until(terminated_events, what="post-terminate")
        terminated = terminated_events()[0]
        assert terminated.upload["Rejected"] == {"StatusCode": 422, "Reason": "infected: EICAR"}
        assert terminated.upload["Owner"] == "alice"
        finished = [event.upload["ID"] for event in scanner.of_type("post-finish")]
        assert finished == [clean.rsplit("/", 1)[1]]  # ordered per upload: none will come for `bad`
        assert scanner.of_type("post-finish")[0].upload["Owner"] == "alice"

        # creation-with-upload refused whole: answered with the hook's status, nothing created
        before = set((server.data_dir / "uploads").iterdir())
        rows_before = upload_ids(database_url)
        whole = httpx.post(
            server.url,
            content=bad_data,
            headers={**OCTETS, "Upload-Length": str(len(bad_data))},
        )
        assert (whole.status_code, whole.text.strip()) == (422, "infected: EICAR")
        assert "Location" not in whole.headers
        assert set((server.data_dir / "uploads").iterdir()) == before
        assert upload_ids(database_url) == rows_before
    finally:
        server.stop()


def test_an_unreachable_pre_finish_hook_commits_nothing_of_the_last_body(
    tmp_path: Path, database_url: str, scanner: HookReceiver
) -> None:
    scanner.failing_until = float("inf")
    scanner.failing_types = {"pre-finish"}
    flags = ["--hooks-http", scanner.url, "--hooks-enabled-events", EVENTS, "--hook-timeout", "2"]
    server = ServerProcess(tmp_path / "data", database_url, extra_args=flags)
    server.start()
    try:
        url = _new(server, 8)
        assert _patch(url, 0, b"abcd").status_code == 204
        failed = _patch(url, 4, b"efgh")
        assert failed.status_code == 503
        assert failed.headers["Retry-After"].isdigit()
        assert failed.text.strip() == "the pre-finish hook is unavailable, retry later"
        head = httpx.head(url, headers=TUS)
        assert (head.status_code, head.headers["Upload-Offset"]) == (200, "4")
        scanner.failing_until = 0.0  # the receiver is back: the client's retry completes the upload
        assert _patch(url, 4, b"efgh").status_code == 204
        assert httpx.get(url).content == b"abcdefgh"
        _wait_until(lambda: scanner.of_type("post-finish"), what="post-finish")
    finally:
        server.stop()


class Scanner:
    """A `--hooks-python` pre-finish that refuses uploads whose metadata names them `bad`."""

    def __init__(self) -> None:
        self.finished: list[str] = []

    async def pre_finish(self, event: HookEvent) -> None:
        if event.metadata.get("filename") == "bad":
            raise HookRejected(451, "refused by policy")

    async def post_finish(self, event: HookEvent) -> None:
        self.finished.append(event.upload.id)


BAD = "filename YmFk"  # "bad"


@pytest.mark.anyio
async def test_uploads_complete_at_birth_are_refused_whole(tmp_path: Path, database_url: str) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, keep_partials=True)
    scanner = Scanner()
    app = AppClient(settings)
    app.app = create_app(settings, hooks=scanner)
    async with app as client:
        empty = await client.post(BASE, headers={"Upload-Length": "0", "Upload-Metadata": BAD})
        assert (empty.status_code, empty.text.strip()) == (451, "refused by policy")
        assert "Location" not in empty.headers

        part = await create(client, 3, Upload_Concat="partial")
        assert (await patch(client, part, 0, b"abc")).status_code == 204  # partials are scanned too
        final = await client.post(BASE, headers={"Upload-Concat": f"final;{part}", "Upload-Metadata": BAD})
        assert (final.status_code, final.text.strip()) == (451, "refused by policy")
        assert sorted(path.name for path in (tmp_path / "data" / "uploads").iterdir()) == [
            part.rsplit("/", 1)[1]
        ]  # the assembled bytes were removed again

        fine = await client.post(BASE, headers={"Upload-Concat": f"final;{part}"})
        assert fine.status_code == 201
        assert (await client.get(fine.headers["Location"])).content == b"abc"
