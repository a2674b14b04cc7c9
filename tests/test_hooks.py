"""The finish hook: fired once per upload (at least once across crashes), signed with `--hooks-secret`,
never failing or delaying the response."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests import hook_recorder
from tests.conftest import AppClient, app_client
from tests.helpers import BASE, create, patch
from tusserver import HookAnswer, HookEvent, HookRejected, Settings, create_app
from tusserver.hooks import load_callable, signature

pytestmark = pytest.mark.anyio


class WebhookReceiver:
    """A real HTTP server on a loopback port that keeps every JSON body POSTed to it."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict[str, object]] = []
        self.requests: list[tuple[dict[str, str], bytes]] = []
        """Each request's headers and raw body."""
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                raw = self.rfile.read(length)
                receiver.requests.append((dict(self.headers.items()), raw))
                receiver.bodies.append(json.loads(raw))
                self.send_response(status)
                self.end_headers()
                receiver.arrived.set()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(autouse=True)
def _fresh_recorder() -> None:
    hook_recorder.events.clear()
    hook_recorder.release = asyncio.Event()


def hooked(tmp_path: Path, database_url: str, **options: object) -> Settings:
    return Settings(data_dir=tmp_path / "d", database_url=database_url, hook_timeout=2.0, **options)  # type: ignore[arg-type]


async def wait_for(condition: Callable[[], object], within: float = 5.0) -> None:
    """Poll `condition` until it holds (hooks run in the background, on their own schedule)."""
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not met within {within} s")


@pytest.mark.parametrize("hook", ["tests.hook_recorder:record", "tests.hook_recorder:record_async"])
async def test_callable_fires_once_with_upload_facts(tmp_path: Path, database_url: str, hook: str) -> None:
    settings = hooked(tmp_path, database_url, on_finish=hook)
    async with app_client(settings) as client:
        path = await create(client, 6, Upload_Metadata="filename cmVwb3J0LnBkZg==,empty")
        assert (await patch(client, path, 0, b"abc")).status_code == 204
        assert (await patch(client, path, 3, b"def")).status_code == 204
        assert (await patch(client, path, 6, b"")).status_code == 204  # a retry must not fire again
        await wait_for(lambda: hook_recorder.events)
        await asyncio.sleep(0.2)
    assert len(hook_recorder.events) == 1
    event = hook_recorder.events[0]
    assert event.upload.id == path.rsplit("/", 1)[1]
    assert (event.upload.length, event.upload.offset) == (6, 6)
    assert event.metadata == {"filename": "report.pdf", "empty": ""}
    assert Path(event.storage["path"]).read_bytes() == b"abcdef"


async def test_zero_length_and_creation_with_upload_fire_too(tmp_path: Path, database_url: str) -> None:
    settings = hooked(tmp_path, database_url, on_finish="tests.hook_recorder:record")
    async with app_client(settings) as client:
        await create(client, 0)
        headers = {"Upload-Length": "3", "Content-Type": "application/offset+octet-stream"}
        assert (await client.post(BASE, headers=headers, content=b"abc")).status_code == 201
        await wait_for(lambda: len(hook_recorder.events) == 2)
    assert sorted(event.upload.length or 0 for event in hook_recorder.events) == [0, 3]


async def test_webhook_receives_json_once(
    tmp_path: Path, database_url: str, receiver: WebhookReceiver
) -> None:
    settings = hooked(tmp_path, database_url, webhook_url=receiver.url)
    async with app_client(settings) as client:
        path = await create(client, 2, Upload_Metadata="filename YS50eHQ=")
        assert (await patch(client, path, 0, b"hi")).status_code == 204
        await wait_for(lambda: receiver.bodies)
        await asyncio.sleep(0.2)
    assert len(receiver.bodies) == 1
    body = receiver.bodies[0]
    assert body["type"] == "post-finish"
    upload = body["upload"]
    assert isinstance(upload, dict)
    assert upload["id"] == path.rsplit("/", 1)[1]
    assert upload["length"] == 2
    assert upload["metadata"] == {"filename": "a.txt"}
    assert upload["storage"]["type"] == "local"
    headers, _ = receiver.requests[0]
    assert headers["Tusserver-Event-Id"] == body["event_id"]
    assert "Tusserver-Signature" not in headers  # no --hooks-secret


async def test_webhook_requests_are_signed_with_the_hooks_secret(
    tmp_path: Path, database_url: str, receiver: WebhookReceiver
) -> None:
    settings = hooked(tmp_path, database_url, webhook_url=receiver.url, hooks_secret="s3cret")
    async with app_client(settings) as client:
        path = await create(client, 1)
        assert (await patch(client, path, 0, b"x")).status_code == 204
        await wait_for(lambda: receiver.requests)
    headers, raw = receiver.requests[0]
    fields = dict(part.split("=", 1) for part in headers["Tusserver-Signature"].split(","))
    assert hmac.compare_digest(fields["v1"], signature("s3cret", fields["t"], raw))
    assert abs(int(fields["t"]) - time.time()) < 60
    assert signature("other", fields["t"], raw) != fields["v1"]


async def test_slow_hook_does_not_delay_the_response(tmp_path: Path, database_url: str) -> None:
    settings = hooked(tmp_path, database_url, on_finish="tests.hook_recorder:blocking")
    async with app_client(settings) as client:
        path = await create(client, 1)
        response = await patch(client, path, 0, b"x")
        assert response.status_code == 204  # answered while the hook is still blocked
        await wait_for(lambda: hook_recorder.events)
        assert not hook_recorder.release.is_set()
        hook_recorder.release.set()


async def test_failing_hooks_are_logged_not_fatal_and_retried(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tusserver.outbox")
    failing_receiver = WebhookReceiver(status=500)
    try:
        settings = hooked(
            tmp_path, database_url, on_finish="tests.hook_recorder:failing", webhook_url=failing_receiver.url,
            hooks_backoff_max=0.2,
        )  # fmt: skip
        async with app_client(settings) as client:
            path = await create(client, 1)
            assert (await patch(client, path, 0, b"x")).status_code == 204
            await wait_for(lambda: len(failing_receiver.bodies) >= 3, within=10)
    finally:
        failing_receiver.close()
    upload_id = path.rsplit("/", 1)[1]
    failures = [r.getMessage() for r in caplog.records if "hook_failed" in r.getMessage()]
    assert {"sink=on-finish", "sink=webhook"} <= {part for message in failures for part in message.split()}
    assert all(upload_id in message for message in failures)
    assert len({body["event_id"] for body in failing_receiver.bodies}) == 1  # one event, retried


def test_bad_hook_specs_fail_at_start_up(tmp_path: Path) -> None:
    from tusserver import create_app

    for spec in ["nocolon", "tests.hook_recorder:missing", "no.such.module:f", "tests.hook_recorder:events"]:
        with pytest.raises(ValueError, match="hook"):
            create_app(Settings(data_dir=tmp_path, on_finish=spec))
    assert callable(load_callable("tests.hook_recorder:record"))


async def test_unreachable_webhook_is_logged(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.servers import free_port

    settings = hooked(tmp_path, database_url, webhook_url=f"http://127.0.0.1:{free_port()}/nobody")
    async with app_client(settings) as client:
        path = await create(client, 1)
        assert (await patch(client, path, 0, b"x")).status_code == 204
        await wait_for(lambda: any("hook_failed" in r.getMessage() for r in caplog.records), within=10)
    assert any(
        path.rsplit("/", 1)[1] in r.getMessage() for r in caplog.records if "hook_failed" in r.getMessage()
    )


class Gatekeeper:
    """A `--hooks-python` object: methods named after the events it wants, sync or async."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    async def pre_create(self, event: HookEvent) -> HookAnswer:
        if "filename" not in event.metadata:
            return HookAnswer(reject=True, status=422, body="name your file")
        return HookAnswer(new_metadata={**event.metadata, "owner": "alice"})

    def post_finish(self, event: HookEvent) -> None:  # sync: runs in a worker thread
        self.seen.append((str(event.type), event.upload.id, event.metadata["owner"]))

    async def pre_terminate(self, event: HookEvent) -> None:
        raise HookRejected(409, f"{event.metadata['filename']} is kept")


gatekeeper = Gatekeeper()


@pytest.mark.parametrize("wiring", ["create_app", "--hooks-python"])
async def test_python_hooks_object(tmp_path: Path, database_url: str, wiring: str) -> None:
    keeper = Gatekeeper() if wiring == "create_app" else gatekeeper
    gatekeeper.seen.clear()
    settings = hooked(tmp_path, database_url)
    if wiring == "--hooks-python":
        settings = hooked(tmp_path, database_url, hooks_python="tests.test_hooks:gatekeeper")
    app = AppClient(settings)
    if wiring == "create_app":
        app.app = create_app(settings, hooks=keeper)
    async with app as client:
        refused = await client.post(BASE, headers={"Upload-Length": "1"})
        assert (refused.status_code, refused.text.strip()) == (422, "name your file")
        path = await create(client, 1, Upload_Metadata="filename YS50eHQ=")
        assert (await patch(client, path, 0, b"x")).status_code == 204
        upload_id = path.rsplit("/", 1)[1]
        await wait_for(lambda: keeper.seen == [("post-finish", upload_id, "alice")])
        kept = await client.delete(path)
        assert (kept.status_code, kept.text.strip()) == (409, "a.txt is kept")
        assert "owner" in (await client.head(path)).headers["Upload-Metadata"]
