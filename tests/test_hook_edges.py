"""Where hooks meet the write path's edges: an ID a pre-create hook picks that is taken, a
post-receive stop during creation-with-upload, an IETF creation whose last commit fails, and Python
hooks that fail or hang (503 + Retry-After, as an HTTP hook receiver that fails)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import AppClient
from tests.helpers import BASE, patch, upload_ids
from tusserver import HookAnswer, HookEvent, Settings, create_app
from tusserver import hooks as hooks_module
from tusserver.errors import ServiceUnavailable
from tusserver.records import UploadRecords

pytestmark = pytest.mark.anyio
FIXED_ID = "ab" * 16


class FixedId:
    """A pre-create hook that gives every upload the same ID (a hook bug the server must survive)."""

    async def pre_create(self, event: HookEvent) -> HookAnswer:
        return HookAnswer(new_id=FIXED_ID)


class StopAtFirstProgress:
    """post-receive answers StopUpload as soon as any byte is committed."""

    async def post_receive(self, event: HookEvent) -> HookAnswer:
        return HookAnswer(stop=bool(event.upload.offset), status=403, body="quota exceeded")


class Broken:
    """Blocking hooks with a bug (pre-create) and one that hangs (pre-terminate)."""

    def __init__(self) -> None:
        self.hanging = asyncio.Event()

    async def pre_create(self, event: HookEvent) -> HookAnswer:
        if event.metadata.get("broken"):
            raise RuntimeError("a bug in the hook")
        return HookAnswer()

    async def pre_terminate(self, event: HookEvent) -> HookAnswer:
        self.hanging.set()
        await asyncio.sleep(60)
        return HookAnswer()


class SyncHooks:
    """Sync blocking hooks: pre-terminate hangs until released; pre-create meets a timeout of its own."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def pre_create(self, event: HookEvent) -> HookAnswer:
        if event.metadata.get("slow-backend"):
            raise TimeoutError("the hook's own call to its backend timed out")
        return HookAnswer()

    def pre_terminate(self, event: HookEvent) -> HookAnswer:
        self.entered.set()
        self.release.wait(30)
        return HookAnswer()


class FailingProgress:
    """A post-receive receiver that is down: every call fails."""

    def __init__(self) -> None:
        self.offsets: list[int] = []

    async def post_receive(self, event: HookEvent) -> HookAnswer:
        self.offsets.append(event.upload.offset)
        raise RuntimeError("the progress receiver is down")


def _app(settings: Settings, hooks: object) -> AppClient:
    app = AppClient(settings)
    app.app = create_app(settings, hooks=hooks)
    return app


async def test_a_taken_id_from_pre_create_is_refused_and_the_owner_of_it_keeps_its_bytes(
    tmp_path: Path, database_url: str
) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    async with _app(settings, FixedId()) as client:
        first = await client.post(BASE, headers={"Upload-Length": "8"})
        assert first.status_code == 201
        assert (await patch(client, f"{BASE}{FIXED_ID}", 0, b"precious")).status_code == 204
        second = await client.post(BASE, headers={"Upload-Length": "3"})
        assert second.status_code == 409
        assert "taken" in second.text
        assert (await client.get(f"{BASE}{FIXED_ID}")).content == b"precious"


async def test_a_stop_during_creation_with_upload_terminates_the_upload(
    tmp_path: Path, database_url: str
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", database_url=database_url, commit_interval=0.1, progress_interval=0.05
    )

    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(40):  # 2 s at most: the stop comes after the first checkpoint
            yield b"x" * 10
            await asyncio.sleep(0.05)

    async with _app(settings, StopAtFirstProgress()) as client:
        headers = {"Upload-Length": "400", "Content-Type": "application/offset+octet-stream"}
        before = upload_ids(database_url)
        stopped = await client.post(BASE, headers=headers, content=trickle())
        assert (stopped.status_code, stopped.text.strip()) == (403, "quota exceeded")
        assert upload_ids(database_url) == before
        assert "Location" not in stopped.headers
    assert list((tmp_path / "data" / "uploads").iterdir()) == []


async def test_an_ietf_creation_whose_commit_failed_is_not_declared_complete(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Upload-Complete: ?1` with a chunked body: the length is fixed where the body ends only if
    every byte of it was committed; a failed final commit leaves the upload incomplete (`?0`)."""
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    async with AppClient(settings) as client:
        commit = UploadRecords.commit
        failures = [ServiceUnavailable("database unavailable, retry later")]

        async def failing_once(self: UploadRecords, *args: object, **kwargs: object) -> object:
            if failures:
                raise failures.pop()
            return await commit(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(UploadRecords, "commit", failing_once)

        async def chunked() -> AsyncIterator[bytes]:
            yield b"hello "
            yield b"world"

        headers = {"Upload-Draft-Interop-Version": "8", "Upload-Complete": "?1"}
        created = await client.post(BASE, headers=headers, content=chunked())
        assert created.status_code == 201
        assert (created.headers["Upload-Offset"], created.headers["Upload-Complete"]) == ("0", "?0")
        head = await client.head(created.headers["Location"], headers={"Upload-Draft-Interop-Version": "8"})
        assert (head.headers["Upload-Offset"], head.headers["Upload-Complete"]) == ("0", "?0")


async def test_python_hooks_that_fail_or_hang_answer_503_and_change_nothing(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, hook_timeout=0.5)
    hooks = Broken()
    async with _app(settings, hooks) as client:
        before = upload_ids(database_url)
        failed = await client.post(BASE, headers={"Upload-Length": "3", "Upload-Metadata": "broken eWVz"})
        assert (failed.status_code, failed.headers.get("Retry-After")) == (503, "5")
        assert "pre-create hook failed" in failed.text
        assert upload_ids(database_url) == before
        created = await client.post(BASE, headers={"Upload-Length": "3"})
        assert created.status_code == 201
        started = time.monotonic()
        hung = await client.delete(created.headers["Location"])
        assert hooks.hanging.is_set()
        assert (hung.status_code, hung.headers.get("Retry-After")) == (503, "5")
        assert time.monotonic() - started < 5  # --hook-timeout, not the hook's minute
        assert "did not answer in time" in hung.text
        assert (await client.head(created.headers["Location"])).status_code == 200  # not deleted
    assert any("hook_failed type=pre-create" in r.getMessage() and r.exc_info for r in caplog.records)


async def test_a_sync_hook_past_its_time_keeps_its_thread_and_busy_threads_answer_503_at_once(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(hooks_module, "HOOK_THREADS", 1)
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, hook_timeout=0.3)
    hooks = SyncHooks()
    async with _app(settings, hooks) as client:
        own = await client.post(BASE, headers={"Upload-Length": "1", "Upload-Metadata": "slow-backend eWVz"})
        assert own.status_code == 503
        assert "hook failed" in own.text  # its own timeout is a failure, not --hook-timeout
        location = (await client.post(BASE, headers={"Upload-Length": "1"})).headers["Location"]
        hung = await client.delete(location)
        assert hooks.entered.is_set()
        assert (hung.status_code, "did not answer in time" in hung.text) == (503, True)
        started = time.monotonic()
        busy = await client.delete(location)  # the one thread still runs the first call
        assert (busy.status_code, busy.headers.get("Retry-After")) == (503, "5")
        assert "busy" in busy.text
        assert time.monotonic() - started < 0.3  # at once, not after --hook-timeout
        hooks.release.set()
        for _ in range(200):  # 10 s at most: the thread frees itself once the hook returns
            answer = await client.delete(location)
            if answer.status_code != 503:
                break
            await asyncio.sleep(0.05)
        assert answer.status_code == 204
    failures = [r.getMessage() for r in caplog.records if r.getMessage().startswith("hook_failed")]
    assert any("type=pre-create" in message for message in failures)


async def test_a_failing_post_receive_is_never_retried_and_never_fails_the_upload(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        data_dir=tmp_path / "data", database_url=database_url, commit_interval=0.1, progress_interval=0.05
    )

    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(20):  # a slow client: 1 s, so that checkpoints report progress on the way
            yield b"x" * 10
            await asyncio.sleep(0.05)

    hooks = FailingProgress()
    async with _app(settings, hooks) as client:
        location = (await client.post(BASE, headers={"Upload-Length": "200"})).headers["Location"]
        octets = {"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
        answer = await client.patch(location, content=trickle(), headers=octets)
        assert answer.status_code == 204
        for _ in range(100):  # the completing report is sent in the background: 5 s at most
            if 200 in hooks.offsets:
                break
            await asyncio.sleep(0.05)
    assert 200 in hooks.offsets
    assert len(hooks.offsets) >= 2  # progress on the way, then completion
    assert len(hooks.offsets) == len(set(hooks.offsets))  # each report once: a failure is not retried
    failures = [r for r in caplog.records if r.getMessage().startswith("hook_failed type=post-receive")]
    assert failures
    assert all(r.exc_info is None and "RuntimeError" in r.getMessage() for r in failures)  # one line each
