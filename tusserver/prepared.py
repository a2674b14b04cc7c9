"""Statements compiled by SQLAlchemy once and then run by the raw database driver.

SQLAlchemy's execution layer costs more than a primary-key statement itself (about 100 µs on SQLite
against 20 µs in the driver; on PostgreSQL its async layer costs about as much as the round trip).
So the statements every request runs are compiled once per dialect into a `Plan`: the SQL text, the
order of its parameters and the types' own bind and result processors all come from that
compilation, so each query is still written once, in SQLAlchemy, in `records.py` and `outbox.py`.
`pg_direct.py` runs plans on asyncpg, `statements.SqliteRunner` on pysqlite.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

Processor = Callable[[Any], Any]


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
    result: dict[str, Processor]
    returns_rows: bool

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        """The driver's positional arguments for `params` (defaults and processors applied)."""
        arguments = []
        for key, default, processor in self.slots:
            value = params.get(key, default)
            if value is _REQUIRED:
                raise KeyError(f"no value for the bound parameter {key!r}")
            arguments.append(value if processor is None else processor(value))
        return arguments

    def row(self, items: Iterable[tuple[str, Any]]) -> Row:
        """A result row from the driver's (name, value) pairs, through the result processors."""
        result = self.result
        return Row(
            {key: processor(value) if (processor := result.get(key)) else value for key, value in items}
        )


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
    result = {}
    for column in described:
        processor = column["type"].dialect_impl(dialect).result_processor(dialect, None)
        if processor is not None:
            result[column["name"]] = processor
    return Plan(compiled.string, tuple(slots), result, returns_rows)
