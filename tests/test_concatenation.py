"""concatenation extension (PROTOCOL.md §10), without concatenation-unfinished."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from tests import hook_recorder
from tests.conftest import app_client
from tests.helpers import BASE, create, patch, stored_bytes, upload_ids
from tusserver import Settings

pytestmark = pytest.mark.anyio


async def partial(client: httpx.AsyncClient, data: bytes, finish: bool = True) -> str:
    path = await create(client, len(data), Upload_Concat="partial")
    if finish:
        assert (await patch(client, path, 0, data)).status_code == 204
    return path


async def final(client: httpx.AsyncClient, value: str, **headers: str) -> httpx.Response:
    extra = {name.replace("_", "-"): text for name, text in headers.items()}
    return await client.post(BASE, headers={"Upload-Concat": value, **extra})


async def test_partials_concatenate_in_order_x2_x3_x4(client: httpx.AsyncClient, settings: Settings) -> None:
    first, second = await partial(client, b"AAAAA\n"), await partial(client, b"BBBBBB\n")
    head = await client.head(first)
    assert head.headers["Upload-Concat"] == "partial"
    value = f"final;http://testserver{first} {second}"  # absolute and relative URLs
    response = await final(client, value, Upload_Metadata="filename YWIudHh0")
    assert response.status_code == 201
    path = httpx.URL(response.headers["Location"]).path
    head = await client.head(path)
    assert (head.headers["Upload-Offset"], head.headers["Upload-Length"]) == ("13", "13")
    assert head.headers["Upload-Concat"] == value  # as received
    assert head.headers["Upload-Metadata"] == "filename YWIudHh0"  # its own metadata only
    assert stored_bytes(settings.data_dir, path) == b"AAAAA\nBBBBBB\n"


@pytest.fixture
async def keeping(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a server started with --keep-partials."""
    async with app_client(replace(settings, keep_partials=True)) as http:
        yield http


async def test_space_after_semicolon_and_repeated_partial_x13_x14(
    keeping: httpx.AsyncClient, settings: Settings
) -> None:
    part = await partial(keeping, b"ab")
    response = await final(keeping, f"final; {part} {part}")
    assert response.status_code == 201
    assert stored_bytes(settings.data_dir, httpx.URL(response.headers["Location"]).path) == b"abab"
    assert (await keeping.head(part)).status_code == 200  # kept: usable in another final
    again = await final(keeping, f"final;{part}")
    assert stored_bytes(settings.data_dir, httpx.URL(again.headers["Location"]).path) == b"ab"


@pytest.mark.local_storage
async def test_partials_are_deleted_once_assembled(client: httpx.AsyncClient, settings: Settings) -> None:
    first, second = await partial(client, b"left-"), await partial(client, b"right")
    response = await final(client, f"final;{first} {second} {first}")
    assert response.status_code == 201
    for part in (first, second):
        assert (await client.head(part)).status_code == 404
        assert not (settings.uploads_dir / part.rsplit("/", 1)[1]).exists()
    assert (await client.get(response.headers["Location"])).content == b"left-rightleft-"


async def test_parts_are_bounded_repeats_included_x11(tmp_path: Path, database_url: str) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, max_concat_parts=3)
    async with app_client(replace(settings, keep_partials=True)) as client:
        part = await partial(client, b"x")
        assert (await final(client, f"final;{part} {part} {part}")).status_code == 201
        refused = await final(client, f"final;{part} {part} {part} {part}")
        assert refused.status_code == 400
        assert "at most 3 partial uploads" in refused.text


async def test_patch_to_final_is_403_whatever_the_offset_x6(client: httpx.AsyncClient) -> None:
    part = await partial(client, b"abcdef")
    path = httpx.URL((await final(client, f"final;{part}")).headers["Location"]).path
    for offset in (0, 6):
        assert (await patch(client, path, offset, b"x")).status_code == 403
    assert (await client.head(path)).headers["Upload-Offset"] == "6"


@pytest.mark.local_storage
async def test_unfinished_or_unknown_partials_create_nothing_x7_x8(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    done = await partial(client, b"done")
    unfinished = await partial(client, b"0123456789", finish=False)
    before = set((settings.data_dir / "uploads").iterdir())
    rows_before = upload_ids(settings.resolved_database_url)
    assert (await final(client, f"final;{done} {unfinished}")).status_code == 400
    assert (await final(client, f"final;{done} {BASE}{'0' * 32}")).status_code in {400, 404}
    assert (await final(client, f"final;{done} {BASE}not-an-id")).status_code in {400, 404}
    assert set((settings.data_dir / "uploads").iterdir()) == before
    assert upload_ids(settings.resolved_database_url) == rows_before


async def test_final_must_name_partials_and_omit_length_x5_x10(client: httpx.AsyncClient) -> None:
    plain = await create(client, 1)
    assert (await patch(client, plain, 0, b"x")).status_code == 204
    not_partial = await final(client, f"final;{plain}")
    assert not_partial.status_code == 400
    assert "not a partial" in not_partial.text
    part = await partial(client, b"y")
    with_length = await final(client, f"final;{part}", Upload_Length="1")
    assert with_length.status_code == 400


@pytest.mark.parametrize("value", ["foo", "PARTIAL", "final;", "final;   ", "", "final", "partial;x"])
async def test_invalid_concat_header_is_400_x12(client: httpx.AsyncClient, value: str) -> None:
    response = await client.post(BASE, headers={"Upload-Length": "1", "Upload-Concat": value})
    assert response.status_code == 400
    assert "Upload-Concat" in response.text


async def test_final_above_max_size_is_413_x11(tmp_path: Path, database_url: str) -> None:
    settings = Settings(data_dir=tmp_path / "d", database_url=database_url, max_size=10)
    async with app_client(settings) as client:
        parts = [await partial(client, b"123456"), await partial(client, b"123456")]
        assert (await final(client, f"final;{parts[0]} {parts[1]}")).status_code == 413


async def test_final_with_body_is_403_cu6(client: httpx.AsyncClient) -> None:
    part = await partial(client, b"ab")
    headers = {"Upload-Concat": f"final;{part}", "Content-Type": "application/offset+octet-stream"}
    assert (await client.post(BASE, headers=headers, content=b"cd")).status_code == 403


async def test_partial_with_deferred_length_x2(client: httpx.AsyncClient) -> None:
    path = await create(client, None, Upload_Concat="partial")
    assert (await patch(client, path, 0, b"xyz", Upload_Length="3")).status_code == 204
    assert (await final(client, f"final;{path}")).status_code == 201


async def test_finish_hook_fires_for_the_final_only(tmp_path: Path, database_url: str) -> None:
    hook_recorder.events.clear()
    settings = Settings(
        data_dir=tmp_path / "d", database_url=database_url, on_finish="tests.hook_recorder:record"
    )
    async with app_client(settings) as client:
        parts = [await partial(client, b"12"), await partial(client, b"34")]
        response = await final(client, f"final;{parts[0]} {parts[1]}")
        for _ in range(200):
            if hook_recorder.events:
                break
            await client.options(BASE)  # give the background hook a turn
    final_id = response.headers["Location"].rsplit("/", 1)[1]
    assert [event.upload.id for event in hook_recorder.events] == [final_id]
    assert Path(hook_recorder.events[0].storage["path"]).read_bytes() == b"1234"


async def test_deleting_a_partial_leaves_the_final_intact_t7(
    keeping: httpx.AsyncClient, settings: Settings
) -> None:
    first, second = await partial(keeping, b"left-"), await partial(keeping, b"right")
    path = httpx.URL((await final(keeping, f"final;{first} {second}")).headers["Location"]).path
    assert (await keeping.delete(first)).status_code == 204
    assert (await keeping.delete(second)).status_code == 204
    assert stored_bytes(settings.data_dir, path) == b"left-right"
    assert (await keeping.get(path)).content == b"left-right"


@pytest.mark.parametrize("error", [errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP])
@pytest.mark.local_storage
async def test_assembly_falls_back_to_plain_copies(
    client: httpx.AsyncClient, settings: Settings, monkeypatch: pytest.MonkeyPatch, error: int
) -> None:
    """No file system here refuses copy_file_range, so the refusal is simulated (the one mock)."""
    refused: list[int] = []

    def refuse(*args: object) -> int:
        refused.append(error)
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "copy_file_range", refuse)
    first, second = await partial(client, b"A" * 3_000_000), await partial(client, b"B" * 5)
    response = await final(client, f"final;{first} {second}")
    assert response.status_code == 201
    location = httpx.URL(response.headers["Location"]).path
    assert stored_bytes(settings.data_dir, location) == b"A" * 3_000_000 + b"BBBBB"
    assert refused == [error]  # tried once, then plain copies for the rest
