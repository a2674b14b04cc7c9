"""tusd v2 HTTP hooks against real server processes (issue 9): a receiver written for tusd works
unchanged, pre-create and pre-access answer for the server, requests are signed, and post-hooks
arrive at least once (exactly once when nothing crashes) through a receiver outage, a kill -9 and
three instances sharing PostgreSQL."""

from __future__ import annotations

import base64
import hmac
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import new_postgres_database
from tests.helpers import upload_ids
from tests.hook_receiver import HookReceiver
from tests.servers import REPO_ROOT, ServerProcess
from tusserver.hooks import signature

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}
SECRET = "hook-secret"
ALL_EVENTS = "pre-access,pre-create,post-create,post-finish,pre-terminate,post-terminate"
POST_FINISH_ONLY = ["--hooks-enabled-events", "post-finish"]
"""For tests where the receiver fails or hangs on purpose: no blocking hook then stops the uploads."""


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _hooked(tmp_path: Path, database_url: str, receiver: HookReceiver, *extra: str) -> ServerProcess:
    flags = [
        "--hooks-http", receiver.url, "--hooks-enabled-events", ALL_EVENTS, "--hooks-secret", SECRET,
        "--hook-timeout", "2", "--hooks-backoff-max", "1", *extra,
    ]  # fmt: skip
    return ServerProcess(tmp_path / "data", database_url, extra_args=flags)


def _wait_until(condition: Any, within: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {within} s"
        time.sleep(0.05)


def _finished_upload(server: ServerProcess, data: bytes, **headers: str) -> str:
    created = httpx.post(server.url, headers={**TUS, "Upload-Length": str(len(data)), **headers})
    assert created.status_code == 201, created.text
    url = created.headers["Location"]
    done = httpx.patch(url, content=data, headers={**OCTETS, "Upload-Offset": "0", **headers})
    assert done.status_code == 204, done.text
    return str(url)


def _tusd_policy(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Like tusd's example receiver: pre-create refuses uploads without a filename; pre-access wants a
    bearer token; pre-terminate refuses to delete `keep.txt`."""
    event = request["Event"]
    answer: dict[str, Any] = {"HTTPResponse": {"Headers": {}}}
    if request["Type"] == "pre-create":
        metadata = event["Upload"]["MetaData"]
        if "filename" not in metadata:
            answer["RejectUpload"] = True
            headers = {"X-From-Pre-Create": "hello"}
            answer["HTTPResponse"] = {"StatusCode": 422, "Body": "a filename is required", "Headers": headers}
        else:
            answer["ChangeFileInfo"] = {"MetaData": {**metadata, "checked": "yes"}}
    token = event["HTTPRequest"]["Header"].get("Authorization")
    if request["Type"] == "pre-access" and token != ["Bearer good"]:
        answer["RejectAccess"] = True
        answer["HTTPResponse"] = {"StatusCode": 403, "Body": "bad token"}
    if request["Type"] == "pre-terminate" and event["Upload"]["MetaData"].get("filename") == "keep.txt":
        answer["RejectTermination"] = True
    return 200, answer


@pytest.fixture
def receiver() -> Iterator[HookReceiver]:
    receiver = HookReceiver(_tusd_policy)
    yield receiver
    receiver.close()


AUTH = {"Authorization": "Bearer good", "Cookie": "session=s1", "Proxy-Authorization": "Basic eDp5"}


def test_a_tusd_receiver_works_unchanged(tmp_path: Path, database_url: str, receiver: HookReceiver) -> None:
    server = _hooked(tmp_path, database_url, receiver)
    server.start()
    try:
        # pre-create refuses by metadata, with the hook's status, body and headers; nothing is created
        before = upload_ids(database_url)
        refused = httpx.post(server.url, headers={**TUS, **AUTH, "Upload-Length": "5"})
        assert refused.status_code == 422
        assert upload_ids(database_url) == before
        assert refused.text.strip() == "a filename is required"
        assert refused.headers["X-From-Pre-Create"] == "hello"
        assert list((server.data_dir / "uploads").iterdir()) == []
        # accepted, with metadata changed by the hook (ChangeFileInfo)
        metadata = f"filename {_b64('a.txt')}"
        url = _finished_upload(server, b"hello", **AUTH, **{"Upload-Metadata": metadata})
        head = httpx.head(url, headers={**TUS, **AUTH})
        assert head.headers["Upload-Metadata"] == f"filename {_b64('a.txt')},checked {_b64('yes')}"
        # pre-access: a PATCH with a bad token is refused before any byte is stored
        other = httpx.post(
            server.url, headers={**TUS, **AUTH, "Upload-Length": "5", "Upload-Metadata": metadata}
        )
        other_url = other.headers["Location"]
        denied = httpx.patch(other_url, content=b"12345", headers={**OCTETS, "Upload-Offset": "0"})
        assert denied.status_code == 403
        assert denied.text.strip() == "bad token"
        assert not (server.data_dir / "uploads" / other_url.rsplit("/", 1)[1]).exists()  # no byte: no file
        assert httpx.head(other_url, headers={**TUS, **AUTH}).headers["Upload-Offset"] == "0"
        assert httpx.get(url).status_code == 403  # downloads are checked too
        assert httpx.delete(url, headers=TUS).status_code == 403
        # pre-terminate refuses, then a DELETE of another upload goes through
        kept = _finished_upload(server, b"k", **AUTH, **{"Upload-Metadata": f"filename {_b64('keep.txt')}"})
        assert httpx.delete(kept, headers={**TUS, **AUTH}).status_code == 400
        assert httpx.head(kept, headers={**TUS, **AUTH}).status_code == 200
        assert httpx.delete(url, headers={**TUS, **AUTH}).status_code == 204

        upload_id = url.rsplit("/", 1)[1]
        _wait_until(lambda: receiver.of_type("post-terminate"), what="post-terminate")
    finally:
        server.stop()
    finished = [item for item in receiver.of_type("post-finish") if item.upload["ID"] == upload_id]
    assert len(finished) == 1
    event = finished[0].body["Event"]
    assert event["Upload"] | {"Storage": None} == {
        "ID": upload_id, "Size": 5, "SizeIsDeferred": False, "Offset": 5, "IsPartial": False,
        "IsFinal": False, "PartialUploads": None, "Storage": None,
        "MetaData": {"filename": "a.txt", "checked": "yes"},
    }  # fmt: skip
    assert event["Upload"]["Storage"]["Type"] == "filestore"
    assert event["HTTPRequest"]["Method"] == "PATCH"
    assert event["HTTPRequest"]["URI"] == f"/files/{upload_id}"
    assert event["HTTPRequest"]["RemoteAddr"].startswith("127.0.0.1:")
    stored_headers = {name.lower() for name in event["HTTPRequest"]["Header"]}
    assert not stored_headers & {
        "authorization",
        "cookie",
        "proxy-authorization",
    }  # no secrets rest in the outbox
    assert [item.upload["ID"] for item in receiver.of_type("post-terminate")] == [upload_id]
    created = {item.upload["ID"] for item in receiver.of_type("post-create")}
    assert upload_id in created
    pre_create = receiver.of_type("pre-create")[0].body["Event"]
    assert pre_create["Upload"]["ID"] == ""  # not chosen yet, as in tusd
    assert pre_create["HTTPRequest"]["Header"]["Authorization"] == ["Bearer good"]  # blocking hooks see all
    assert pre_create["HTTPRequest"]["Header"]["Cookie"] == ["session=s1"]


def test_every_hook_request_is_signed(tmp_path: Path, database_url: str, receiver: HookReceiver) -> None:
    server = _hooked(tmp_path, database_url, receiver)
    server.start()
    try:
        _finished_upload(server, b"x", **AUTH, **{"Upload-Metadata": f"filename {_b64('s.txt')}"})
        _wait_until(lambda: receiver.of_type("post-finish"), what="post-finish")
    finally:
        server.stop()
    assert {"pre-access", "pre-create", "post-create", "post-finish"} <= {
        item.type for item in receiver.received
    }
    for item in receiver.received:
        fields = dict(part.split("=", 1) for part in item.headers["Tusserver-Signature"].split(","))
        expected = signature(SECRET, fields["t"], item.raw)
        assert hmac.compare_digest(fields["v1"], expected), item.type
        assert abs(int(fields["t"]) - time.time()) < 120
        assert signature("wrong secret", fields["t"], item.raw) != fields["v1"]
        assert item.headers["Tusserver-Event-Id"]


def test_post_finish_survives_a_receiver_outage(tmp_path: Path, database_url: str) -> None:
    receiver = HookReceiver()
    receiver.failing_until = time.monotonic() + 20  # the receiver answers 500 for 20 s
    flags = [
        "--hooks-http",
        receiver.url,
        *POST_FINISH_ONLY,
        "--hook-timeout",
        "2",
        "--hooks-backoff-max",
        "2",
    ]
    server = ServerProcess(tmp_path / "data", database_url, extra_args=flags)
    server.start()
    try:
        urls = [_finished_upload(server, f"upload {n}".encode()) for n in range(10)]
        ids = {url.rsplit("/", 1)[1] for url in urls}
        _wait_until(lambda: ids <= {i.upload["ID"] for i in receiver.of_type("post-finish")}, within=40)
        time.sleep(0.5)  # room for a duplicate to show up, were there one
    finally:
        server.stop()
        receiver.close()
    counts = Counter(item.upload["ID"] for item in receiver.of_type("post-finish"))
    assert counts == Counter(dict.fromkeys(ids, 1))  # each once: nothing crashed
    assert "hook_failed" in server.log()


def test_post_finish_survives_kill_9_before_delivery(tmp_path: Path, database_url: str) -> None:
    receiver = HookReceiver()
    receiver.hold.clear()  # the receiver takes the request and never answers
    server = ServerProcess(
        tmp_path / "data",
        database_url,
        extra_args=["--hooks-http", receiver.url, *POST_FINISH_ONLY, "--hook-timeout", "1"],
    )
    server.start()
    try:
        url = _finished_upload(server, b"precious")  # its 204 came back: the event is committed
        server.kill()  # before any delivery could be acknowledged
        receiver.received.clear()
        receiver.hold.set()
        server.start()
        upload_id = url.rsplit("/", 1)[1]
        _wait_until(
            lambda: any(i.upload["ID"] == upload_id for i in receiver.of_type("post-finish")), within=30
        )
    finally:
        server.stop()
        receiver.close()


@pytest.mark.postgresql
def test_three_instances_deliver_each_event_once(tmp_path: Path) -> None:
    database_url = new_postgres_database()
    receiver = HookReceiver()
    flags = ["--hooks-http", receiver.url, "--hook-timeout", "2"]
    servers = [ServerProcess(tmp_path / "data", database_url, extra_args=flags) for _ in range(3)]
    try:
        for server in servers:
            server.start()
        urls = [_finished_upload(servers[n % 3], f"upload {n}".encode()) for n in range(30)]
        ids = {url.rsplit("/", 1)[1] for url in urls}
        _wait_until(lambda: ids <= {i.upload["ID"] for i in receiver.of_type("post-finish")}, within=30)
        time.sleep(1.5)  # more than a poll interval: room for a duplicate to show up, were there one
    finally:
        for server in servers:
            server.stop()
        receiver.close()
    counts = Counter(item.upload["ID"] for item in receiver.of_type("post-finish"))
    assert counts == Counter(dict.fromkeys(ids, 1))
    delivering = [server for server in servers if "hook_delivered" in server.log()]
    assert len(delivering) >= 1


def _operator(database_url: str, data_dir: Path, *action: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tusserver", "hooks", *action, "--database-url", database_url]
    return subprocess.run(
        [*command, "--data-dir", str(data_dir)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )


def test_operators_list_dead_events_and_retry_them(tmp_path: Path, database_url: str) -> None:
    if database_url.startswith("postgresql"):
        database_url = new_postgres_database()  # listing shows every event of the database
    receiver = HookReceiver()
    receiver.failing_until = float("inf")
    flags = [
        "--hooks-http",
        receiver.url,
        *POST_FINISH_ONLY,
        "--hooks-max-age",
        "1",
        "--hooks-backoff-max",
        "0.2",
    ]
    server = ServerProcess(tmp_path / "data", database_url, extra_args=flags)
    server.start()
    try:
        upload_id = _finished_upload(server, b"late").rsplit("/", 1)[1]
        _wait_until(lambda: "hook_dead" in server.log(), what="the event to be given up")
        listed = _operator(database_url, server.data_dir, "list", "--failed")
        assert listed.returncode == 0, listed.stderr
        [line] = [line for line in listed.stdout.splitlines() if upload_id in line]
        assert " dead " in line
        assert "post-finish" in line
        assert "answered 500" in line
        assert upload_id not in _operator(database_url, server.data_dir, "list").stdout  # none pending
        receiver.failing_until = 0.0
        retried = _operator(database_url, server.data_dir, "retry", "--all-failed")
        assert retried.stdout.strip() == "1 event(s) queued for delivery", retried.stderr
        _wait_until(lambda: any(i.upload["ID"] == upload_id for i in receiver.of_type("post-finish")))
        delivered = _operator(database_url, server.data_dir, "list", "--delivered")
        assert upload_id in delivered.stdout
        assert _operator(database_url, server.data_dir, "retry", "no-such-event").returncode == 1
    finally:
        server.stop()
        receiver.close()


def test_a_post_finish_retried_still_arrives_before_its_post_terminate(
    tmp_path: Path, database_url: str
) -> None:
    """A DELETE right after the finishing PATCH, while the receiver refuses post-finish for a while:
    the receiver never sees a post-finish for a file that is gone without a post-terminate after it."""
    receiver = HookReceiver()
    receiver.failing_types = {"post-finish"}
    receiver.failing_until = time.monotonic() + 3
    flags = ["--hooks-http", receiver.url, "--hooks-enabled-events", "post-finish,post-terminate"]
    server = ServerProcess(tmp_path / "data", database_url, extra_args=[*flags, "--hooks-backoff-max", "0.5"])
    server.start()
    try:
        url = _finished_upload(server, b"short-lived")
        assert httpx.delete(url, headers=TUS).status_code == 204
        upload_id = url.rsplit("/", 1)[1]
        _wait_until(
            lambda: len([i for i in receiver.received if i.upload["ID"] == upload_id]) == 2, within=30
        )
    finally:
        server.stop()
        receiver.close()
    assert [item.type for item in receiver.received if item.upload["ID"] == upload_id] == [
        "post-finish",
        "post-terminate",
    ]
    assert "hook_failed" in server.log()  # post-finish was refused at first


def test_post_receive_reports_progress_of_a_slow_patch(tmp_path: Path, database_url: str) -> None:
    receiver = HookReceiver()
    flags = [
        "--hooks-http",
        receiver.url,
        "--hooks-enabled-events",
        "post-receive",
        "--commit-interval",
        "0.5",
    ]
    server = ServerProcess(tmp_path / "data", database_url, extra_args=[*flags, "--progress-interval", "0.5"])
    server.start()
    try:
        url = httpx.post(server.url, headers={**TUS, "Upload-Length": "40"}).headers["Location"]

        def trickle() -> Iterator[bytes]:
            for _ in range(8):  # 40 bytes over about 2.4 s
                yield b"12345"
                time.sleep(0.3)

        done = httpx.patch(
            url, content=trickle(), headers={**OCTETS, "Upload-Offset": "0", "Content-Length": "40"}
        )
        assert done.status_code == 204
        _wait_until(lambda: any(i.upload["Offset"] == 40 for i in receiver.of_type("post-receive")))
    finally:
        server.stop()
        receiver.close()
    offsets = [item.upload["Offset"] for item in receiver.of_type("post-receive")]
    assert len(set(offsets)) >= 3  # progress during the body, not only at its end
    assert max(offsets) == 40  # (best effort: sent in the background, so not necessarily in order)


def test_post_receive_stop_upload_ends_the_patch_and_terminates(tmp_path: Path, database_url: str) -> None:
    """tusd's `StopUpload`: the PATCH writing the upload ends with the hook's answer, and the upload
    is terminated (its bytes and row are gone, post-terminate is sent)."""

    def quota(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if request["Type"] == "post-receive" and request["Event"]["Upload"]["Offset"] > 0:
            return 200, {"StopUpload": True, "HTTPResponse": {"StatusCode": 400, "Body": "quota exceeded"}}
        return 200, {}

    receiver = HookReceiver(quota)
    flags = ["--hooks-http", receiver.url, "--hooks-enabled-events", "post-receive,post-terminate"]
    timing = ["--commit-interval", "0.3", "--progress-interval", "0.3"]
    server = ServerProcess(tmp_path / "data", database_url, extra_args=[*flags, *timing])
    server.start()
    try:
        url = httpx.post(server.url, headers={**TUS, "Upload-Length": "100"}).headers["Location"]

        def trickle() -> Iterator[bytes]:
            for _ in range(20):  # 100 bytes over about 6 s: stopped well before the end
                yield b"12345"
                time.sleep(0.3)

        stopped = httpx.patch(
            url, content=trickle(), headers={**OCTETS, "Upload-Offset": "0", "Content-Length": "100"}
        )
        assert (stopped.status_code, stopped.text.strip()) == (400, "quota exceeded")
        assert httpx.head(url, headers=TUS).status_code == 404
        assert list((server.data_dir / "uploads").iterdir()) == []
        _wait_until(lambda: receiver.of_type("post-terminate"), what="post-terminate")
        assert receiver.of_type("post-terminate")[0].upload["Offset"] < 100  # stopped mid-body
    finally:
        server.stop()
        receiver.close()


def test_an_unreachable_blocking_hook_answers_503(tmp_path: Path, database_url: str) -> None:
    receiver = HookReceiver()
    receiver.failing_until = float("inf")  # pre-create answers 500: the hook has failed, not refused
    server = ServerProcess(tmp_path / "data", database_url, extra_args=["--hooks-http", receiver.url])
    server.start()
    try:
        before = upload_ids(database_url)
        answer = httpx.post(server.url, headers={**TUS, "Upload-Length": "5"})
        assert upload_ids(database_url) == before
    finally:
        server.stop()
        receiver.close()
    assert answer.status_code == 503
    assert answer.headers["Retry-After"].isdigit()
    assert answer.text.strip() == "the pre-create hook is unavailable, retry later"
    assert list((server.data_dir / "uploads").iterdir()) == []


def test_hooks_http_timeout_bounds_a_receiver_that_hangs(tmp_path: Path, database_url: str) -> None:
    receiver = HookReceiver()
    receiver.hold.clear()  # the receiver takes the request and never answers
    flags = ["--hooks-http", receiver.url, "--hook-timeout", "60", "--hooks-http-timeout", "1"]
    server = ServerProcess(tmp_path / "data", database_url, extra_args=flags)
    server.start()
    try:
        started = time.monotonic()
        answer = httpx.post(server.url, headers={**TUS, "Upload-Length": "5"}, timeout=30)
        waited = time.monotonic() - started
    finally:
        server.stop()
        receiver.close()
    assert answer.status_code == 503
    assert waited < 10  # --hooks-http-timeout, not --hook-timeout's 60 s
