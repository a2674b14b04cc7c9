"""Statements compiled by SQLAlchemy once and then run by the raw database driver.

SQLAlchemy's execution layer costs more than a primary-key statement itself (about 100 µs on SQLite
against 20 µs in the driver; on PostgreSQL its async layer costs about as much as the round trip).
So the statements every request runs are compiled once per dialect into a `Plan`: the SQL text, the
order of its parameters and the types' own bind and result processors all come from that
compilation, so each query is still written once, in SQLAlchemy, in `records.py` and `outbox.py`.
`pg_direct.py` runs plans on asyncpg, `statements.SqliteRunner` on pysqlite.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

from tusserver.core import value_class

Processor = Callable[[Any], Any]
Params = dict[str, Any]


@value_class
class Ran:
    """What a statement gave back: its rows (RETURNING or SELECT) and how many rows it changed."""

    rows: Sequence[Any]
    """`sqlalchemy.Row`s, or rows that read the same way (`row.name`, `row._mapping`)."""
    rowcount: int


class Row(dict[str, Any]):
    """A result row with the access `records.py` uses: `row.name` and `row._mapping`."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def _mapping(self) -> dict[str, Any]:
        return self


_REQUIRED: Any = object()


@dataclass(frozen=True)
class Plan:
    """One statement compiled for one dialect, ready for its driver."""

    sql: str
    slots: tuple[tuple[str, Any, Processor | None], ...]
    """Per positional argument, in the driver's order: the key it takes from the caller's parameters,
    its value when the caller gives none (a literal of the statement, or `_REQUIRED`), and its
    type's bind processor. SQLAlchemy's `construct_params` computes the same per call, at several
    times the cost."""
    columns: tuple[tuple[str, Processor | None], ...]
    """Per result column, in the statement's order: its name and its type's result processor."""
    returns_rows: bool
    arguments: Callable[[Mapping[str, Any]], list[Any]]
    """The driver's positional arguments for the caller's parameters (defaults and processors
    applied); a missing required value raises `KeyError`."""
    row: Callable[[Sequence[Any]], Row]
    """A result row from the driver's values (a tuple, or an asyncpg record), in column order."""


def plan(statement: sa.Executable, dialect: Dialect) -> Plan:
    compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
    slots = []
    for name in compiled.positiontup or ():
        parameter = compiled.binds[name]
        if parameter.callable is not None:
            raise ValueError(f"{name}: a bound parameter with a callable default cannot be planned")
        processor = parameter.type.dialect_impl(dialect).bind_processor(dialect)
        default = _REQUIRED if parameter.required else parameter.effective_value
        slots.append((parameter.key, default, processor))
    if isinstance(statement, sa.Select):
        described, returns_rows = statement.column_descriptions, True
    else:
        described = statement.returning_column_descriptions  # type: ignore[attr-defined]
        returns_rows = bool(described)
    columns = tuple(
        (column["name"], column["type"].dialect_impl(dialect).result_processor(dialect, None))
        for column in described
    )
    return Plan(compiled.string, tuple(slots), columns, returns_rows, _binder(tuple(slots)), _reader(columns))


def _binder(slots: tuple[tuple[str, Any, Processor | None], ...]) -> Callable[[Mapping[str, Any]], list[Any]]:
    """`Plan.arguments` as one list display, generated once per statement (as `dataclasses` and
    `namedtuple` generate code): a loop over the slots per call cost as much as the statement's own
    step in SQLite. Keys are bound parameter names, written into the code only through `repr`."""
    names: dict[str, Any] = {}
    values = []
    for index, (key, default, processor) in enumerate(slots):
        if default is _REQUIRED:
            value = f"params[{key!r}]"
        else:
            names[f"default_{index}"] = default
            value = f"params.get({key!r}, default_{index})"
        if processor is not None:
            names[f"bind_{index}"] = processor
            value = f"bind_{index}({value})"
        values.append(value)
    arguments: Callable[[Mapping[str, Any]], list[Any]] = _compiled(
        "arguments", "params", f"[{', '.join(values)}]", names
    )
    return arguments


def _reader(columns: tuple[tuple[str, Processor | None], ...]) -> Callable[[Sequence[Any]], Row]:
    """`Plan.row` as one dict display, generated once per statement (see `_binder`)."""
    names: dict[str, Any] = {"Row": Row}
    items = []
    for index, (name, processor) in enumerate(columns):
        value = f"values[{index}]"
        if processor is not None:
            names[f"read_{index}"] = processor
            value = f"read_{index}({value})"
        items.append(f"{name!r}: {value}")
    row: Callable[[Sequence[Any]], Row] = _compiled("row", "values", f"Row({{{', '.join(items)}}})", names)
    return row


def _compiled(name: str, argument: str, expression: str, names: dict[str, Any]) -> Any:
    source = f"def {name}({argument}):\n    return {expression}\n"
    exec(compile(source, f"<plan {name}>", "exec"), names)  # noqa: S102 (code made from the plan alone)
    return names[name]
