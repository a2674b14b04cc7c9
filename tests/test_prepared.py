"""`prepared.Plan.arguments` gives the driver exactly what SQLAlchemy's own `construct_params` would,
for every statement the request path runs on the raw drivers, on both dialects."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from tusserver import records
from tusserver.prepared import plan

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
