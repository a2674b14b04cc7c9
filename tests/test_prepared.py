"""`prepared.Plan.arguments` gives the driver exactly what SQLAlchemy's own `construct_params` would,
for every statement the request path runs on the raw drivers, on both dialects."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from tusserver import records
from tusserver.prepared import plan
from tusserver.schema import StorageState, UTCDateTime, metadata

DIALECTS = [sqlite.pysqlite.dialect(), postgresql.asyncpg.dialect()]  # type: ignore[no-untyped-call]


def _sample(parameter: sa.BindParameter[Any]) -> Any:
    kind = parameter.type
    if isinstance(kind, sa.types.TypeDecorator):
        kind = kind.impl_instance
    if isinstance(kind, sa.JSON):
        return {"k": "v"}
    if isinstance(kind, sa.DateTime):
        return datetime.now(UTC)
    if isinstance(kind, sa.Boolean):
        return True
    if isinstance(kind, sa.Integer):
        return 7
    if isinstance(kind, (sa.Numeric, sa.Float)):
        return 1.5
    return "abc"


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda dialect: dialect.name)
def test_plans_bind_what_sqlalchemy_binds(dialect: Dialect) -> None:
    statements = records._PREPARED
    assert statements
    for statement in statements:
        planned = plan(statement, dialect)
        compiled = statement.compile(dialect=dialect)
        given = {
            parameter.key: _sample(parameter) for parameter in compiled.binds.values() if parameter.required
        }
        expected_values = compiled.construct_params(dict(given))
        expected = []
        for name in compiled.positiontup or ():
            processor = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            value = expected_values[name]
            expected.append(processor(value) if processor else value)
        assert planned.arguments(given) == expected, statement
        if given:
            with pytest.raises(KeyError):  # a missing value is an error, not a silent NULL
                planned.arguments({})


def test_sqlite_timestamps_read_back_as_written() -> None:
    """`UTCDateTime` reads SQLite's text in one step: both what SQLAlchemy writes (microseconds)
    and what the lease SQL writes with `strftime('%Y-%m-%d %H:%M:%f')` (milliseconds)."""
    engine = sa.create_engine("sqlite://")
    table = sa.Table("t", sa.MetaData(), sa.Column("at", UTCDateTime))
    written = datetime(2026, 12, 3, 14, 5, 6, 789012, tzinfo=UTC)
    with engine.begin() as connection:
        table.create(connection)
        connection.execute(table.insert(), [{"at": written}, {"at": None}])
        connection.execute(sa.text("INSERT INTO t VALUES ('2026-12-03 14:05:06.789')"))
        connection.execute(sa.text("INSERT INTO t VALUES ('2026-12-03 16:05:06+02:00')"))  # not ours
        read = [row.at for row in connection.execute(sa.select(table.c.at))]
    assert read == [
        written,
        None,
        datetime(2026, 12, 3, 14, 5, 6, 789000, tzinfo=UTC),
        datetime(2026, 12, 3, 14, 5, 6, tzinfo=UTC),
    ]


def test_sqlite_timestamps_are_written_as_sqlalchemy_writes_them() -> None:
    """`UTCDateTime` formats SQLite text itself: the very text SQLAlchemy's own DATETIME writes
    (lease deadlines are compared with it as text), for any zone and with or without microseconds."""
    dialect = sqlite.pysqlite.dialect()
    ours = UTCDateTime().bind_processor(dialect)
    theirs = sa.DateTime().dialect_impl(dialect).bind_processor(dialect)
    assert ours is not None
    assert theirs is not None
    zone = timezone(timedelta(hours=5, minutes=30))
    for moment in (
        datetime(2026, 12, 3, 14, 5, 6, 789012, tzinfo=UTC),
        datetime(2026, 12, 3, 14, 5, 6, tzinfo=UTC),
        datetime(2027, 1, 1, 0, 0, 0, 1, tzinfo=zone),
    ):
        assert ours(moment) == theirs(moment.astimezone(UTC).replace(tzinfo=None))
        assert ours(moment) == ours(moment)  # the second time from the text kept for it
    first, second = datetime(2026, 12, 3, tzinfo=UTC), datetime(2026, 12, 4, tzinfo=UTC)
    assert [ours(first), ours(second), ours(first)] == [
        theirs(first.replace(tzinfo=None)),
        theirs(second.replace(tzinfo=None)),
        theirs(first.replace(tzinfo=None)),
    ]
    assert ours(None) is None


def test_rows_read_columns_in_the_order_the_driver_returns_them(tmp_path: Path) -> None:
    """`Plan.row` reads values by position: the plan's column names are the names SQLite itself
    gives the result columns, for every statement that returns rows (run here on a real database)."""
    dialect = sqlite.pysqlite.dialect()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    metadata.create_all(engine)
    connection = sqlite3.connect(tmp_path / "db.sqlite")
    checked = 0
    for statement in records._PREPARED:
        planned = plan(statement, dialect)
        if not planned.returns_rows:
            continue
        compiled = statement.compile(dialect=dialect)
        given = {
            parameter.key: _sample(parameter) for parameter in compiled.binds.values() if parameter.required
        }
        cursor = connection.execute(planned.sql, planned.arguments(given))
        assert [name for name, _ in planned.columns] == [column[0] for column in cursor.description]
        cursor.close()
        checked += 1
    assert checked >= 2
    connection.close()
    engine.dispose()


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda dialect: dialect.name)
def test_storage_state_is_json_as_sqlalchemy_writes_and_reads_it(dialect: Dialect) -> None:
    """The empty storage state's shortcut writes and reads what SQLAlchemy's JSON does, and every
    read is a dict of its own (a shared one could be changed under another upload)."""
    ours, theirs = StorageState(), sa.JSON()
    bind, their_bind = ours.bind_processor(dialect), theirs.bind_processor(dialect)  # type: ignore[no-untyped-call]
    read, their_read = ours.result_processor(dialect, None), theirs.result_processor(dialect, None)
    assert (bind is None) == (their_bind is None)
    assert (read is None) == (their_read is None)
    for state in ({}, {"key": "uploads/ab", "part": "3"}):
        if bind is not None and their_bind is not None:
            assert bind(state) == their_bind(state)
            text = bind(state)
            if read is not None and their_read is not None:
                assert read(text) == their_read(text) == state
    if read is not None:
        first, second = read("{}"), read("{}")
        assert first == second == {}
        assert first is not second
