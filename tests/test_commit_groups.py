"""Group commit on SQLite (`sqlite_groups.py`): the writes of a few event-loop turns commit in one
transaction, and each request still gets what it alone would have got: its rows, its own error,
nothing of its writes when it failed or was cancelled first."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tusserver import commit_groups, statements

pytestmark = pytest.mark.anyio

_metadata = sa.MetaData()
_item = sa.Table(
    "item",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("body", sa.String, nullable=False),
)
_note = sa.Table(
    "note",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("item_id", sa.Integer, nullable=False, unique=True),
)
_ADD = sa.insert(_item).values(id=sa.bindparam("id"), body=sa.bindparam("body"))
_RENAME = sa.update(_item).where(_item.c.id == sa.bindparam("item_id")).values(body=sa.bindparam("body"))
_ADD_NOTE = sa.insert(_note).values(id=sa.bindparam("note_id"), item_id=sa.bindparam("item_id"))
_ALL = sa.select(_item.c.id, _item.c.body).order_by(_item.c.id)


@contextlib.asynccontextmanager
async def _runner(
    database: Path, fsync: bool = False
) -> AsyncIterator[tuple[statements.SqliteRunner, list[str]]]:
    """A runner on a fresh database, and the SQL its connection runs from now on."""
    engine = sa.create_engine(f"sqlite:///{database}")
    _metadata.create_all(engine)
    engine.dispose()
    runner = statements.SqliteRunner(str(database), fsync, (_ADD, _RENAME, _ADD_NOTE, _ALL))
    traced: list[str] = []
    await runner.run(_ALL)  # connects
    raw: Any = runner._raw()  # the test watches the connection's own SQL
    raw.set_trace_callback(traced.append)
    try:
        yield runner, traced
    finally:
        await runner.close()


def _commits(traced: list[str]) -> int:
    """Transactions in the traced SQL: BEGIN ... COMMIT, and each write outside one (autocommit)."""
    commits, inside = 0, False
    for sql in traced:
        if sql.startswith("BEGIN"):
            inside = True
        elif sql == "COMMIT":
            commits, inside = commits + 1, False
        elif not inside and not sql.startswith("SELECT"):
            commits += 1
    return commits


def _committed(database: Path) -> list[tuple[int, str]]:
    with contextlib.closing(sqlite3.connect(database)) as other:
        return list(other.execute("SELECT id, body FROM item ORDER BY id"))


async def test_the_writes_of_one_loop_turn_commit_together(tmp_path: Path) -> None:
    database = tmp_path / "group.sqlite"
    async with _runner(database) as (runner, traced):
        ran = await asyncio.gather(*(runner.run(_ADD, {"id": n, "body": f"b{n}"}) for n in range(8)))
        assert [result.rowcount for result in ran] == [1] * 8
        assert traced.count("BEGIN IMMEDIATE") == 1
        assert _commits(traced) == 1
        assert _committed(database) == [(n, f"b{n}") for n in range(8)]


async def test_the_writes_of_consecutive_loop_turns_share_a_group(tmp_path: Path) -> None:
    """One write per turn: the first write's group waits for the next turns' writes too."""
    database = tmp_path / "turns.sqlite"
    async with _runner(database) as (runner, traced):
        writes = []
        for n in range(commit_groups.GATHER_TURNS):
            writes.append(asyncio.ensure_future(runner.run(_ADD, {"id": n, "body": "turn"})))
            await asyncio.sleep(0)
        assert not traced  # nothing ran yet: the group is still gathering
        ran = await asyncio.gather(*writes)
        assert [result.rowcount for result in ran] == [1] * commit_groups.GATHER_TURNS
        assert traced.count("BEGIN IMMEDIATE") == 1
        assert _commits(traced) == 1
        assert len(_committed(database)) == commit_groups.GATHER_TURNS


async def test_a_lone_write_runs_in_autocommit_as_before(tmp_path: Path) -> None:
    database = tmp_path / "alone.sqlite"
    async with _runner(database) as (runner, traced):
        await runner.run(_ADD, {"id": 1, "body": "one"})
        assert not any(sql.startswith(("BEGIN", "COMMIT")) for sql in traced), traced
        assert _commits(traced) == 1
        assert _committed(database) == [(1, "one")]


async def test_a_failing_write_fails_alone_and_the_others_commit(tmp_path: Path) -> None:
    database = tmp_path / "isolated.sqlite"
    async with _runner(database) as (runner, _):
        await runner.run(_ADD, {"id": 1, "body": "first"})
        outcomes = await asyncio.gather(
            runner.run(_ADD, {"id": 2, "body": "two"}),
            runner.run(_ADD, {"id": 1, "body": "taken"}),  # the primary key is taken
            runner.run(_ADD, {"id": 3, "body": "three"}),
            return_exceptions=True,
        )
        assert isinstance(outcomes[1], sqlite3.IntegrityError)
        assert [getattr(outcome, "rowcount", None) for outcome in (outcomes[0], outcomes[2])] == [1, 1]
        assert _committed(database) == [(1, "first"), (2, "two"), (3, "three")]


async def test_a_guarded_write_that_fails_in_a_later_step_leaves_nothing(tmp_path: Path) -> None:
    """A state change and the events it causes commit together or not at all, inside a group too."""
    database = tmp_path / "guarded.sqlite"
    async with _runner(database) as (runner, traced):
        for n in (1, 2):
            await runner.run(_ADD, {"id": n, "body": "old"})
        await runner.run(_ADD_NOTE, {"note_id": 10, "item_id": 1})
        outcomes = await asyncio.gather(
            runner.run_guarded(
                (_RENAME, {"item_id": 1, "body": "new"}), [(_ADD_NOTE, {"note_id": 11, "item_id": 1})]
            ),
            runner.run_guarded(
                (_RENAME, {"item_id": 2, "body": "new"}), [(_ADD_NOTE, {"note_id": 12, "item_id": 2})]
            ),
            return_exceptions=True,
        )
        assert isinstance(outcomes[0], sqlite3.IntegrityError)  # item 1 has its note: undone whole
        assert getattr(outcomes[1], "rowcount", None) == 1
        assert traced.count("BEGIN IMMEDIATE") == 1
        assert _committed(database) == [(1, "old"), (2, "new")]


async def test_a_group_another_process_keeps_out_runs_again_write_by_write(tmp_path: Path) -> None:
    """The database locked by another process when the group starts: every write of the group runs
    again alone, with the runner's usual waiting, and none is lost or doubled."""
    database = tmp_path / "busy.sqlite"
    async with _runner(database) as (runner, traced):
        holder = sqlite3.connect(database, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            asyncio.get_running_loop().call_later(0.05, holder.commit)
            ran = await asyncio.gather(*(runner.run(_ADD, {"id": n, "body": "x"}) for n in range(4)))
        finally:
            holder.close()
        assert [result.rowcount for result in ran] == [1] * 4
        assert "BEGIN IMMEDIATE" in traced
        assert _committed(database) == [(n, "x") for n in range(4)]


async def test_a_write_whose_request_was_cancelled_before_its_group_never_runs(tmp_path: Path) -> None:
    database = tmp_path / "cancelled.sqlite"
    async with _runner(database) as (runner, _):
        kept = asyncio.ensure_future(runner.run(_ADD, {"id": 1, "body": "kept"}))
        dropped = asyncio.ensure_future(runner.run(_ADD, {"id": 2, "body": "dropped"}))
        await asyncio.sleep(0)  # both submitted; their group starts a few turns later
        dropped.cancel()
        assert (await kept).rowcount == 1
        with pytest.raises(asyncio.CancelledError):
            await dropped
        assert _committed(database) == [(1, "kept")]


async def test_with_fsync_the_writes_that_arrive_while_a_group_commits_make_up_the_next(
    tmp_path: Path,
) -> None:
    """With `--fsync` every commit fsyncs, in the database thread: requests that arrive meanwhile
    share the next commit instead of queueing a commit each."""
    database = tmp_path / "fsync.sqlite"
    async with _runner(database, fsync=True) as (runner, traced):
        first = asyncio.ensure_future(runner.run(_ADD, {"id": 0, "body": "first"}))
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the first group is in the thread now, fsyncing
        later = []
        for n in range(1, 9):  # one write per loop turn: alone, each would start a group of its own
            later.append(asyncio.ensure_future(runner.run(_ADD, {"id": n, "body": "later"})))
            await asyncio.sleep(0)
        await asyncio.gather(first, *later)
        assert _commits(traced) <= 3, traced
        assert len(_committed(database)) == 9
