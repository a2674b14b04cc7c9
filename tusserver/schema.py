"""The SQL schema of upload state and of the hook outbox, as SQLAlchemy Core objects.

Also the database clock (`db_now`, `db_deadline`), which leases are measured by. This describes the
tables for queries; the database itself is only ever built by the Alembic revisions
in `migrations/`, and a test checks that the two agree. All timestamps are UTC.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes on both sides; SQLite, which keeps no zone, stores naive UTC text."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else _utc(value)

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        """On SQLite, an aware datetime straight to SQLAlchemy's text format (`YYYY-MM-DD
        HH:MM:SS.ffffff`, UTC) in one step, instead of `process_bind_param` and then SQLAlchemy's
        formatting by fields."""
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)
        return _sqlite_text

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        """On SQLite, the stored text straight to an aware datetime in one step (`fromisoformat` reads
        SQLAlchemy's format and SQLite's `strftime` alike), instead of SQLAlchemy's regular
        expression and then `process_result_value`: a fifth of reading an upload row."""
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        return _sqlite_utc


_last_text: tuple[datetime | None, str] = (None, "")


def _sqlite_text(value: datetime | None) -> str | None:
    """`YYYY-MM-DD HH:MM:SS.ffffff` in UTC. By fields: `replace(tzinfo=None).isoformat(...)` took
    twice as long. A row often binds one moment twice (`created_at` and `updated_at` of a new
    upload), so the last text made is kept for the same object."""
    global _last_text
    if value is None:
        return None
    last = _last_text  # one read: the database thread (`--fsync`) binds too
    if value is last[0]:
        return last[1]
    moment = value if value.tzinfo is UTC else value.astimezone(UTC)  # ours are UTC already
    text = "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (  # noqa: UP031 (an f-string took 1.7 times as long)
        moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second, moment.microsecond
    )  # fmt: skip
    _last_text = (value, text)
    return text


def _sqlite_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # as stored: naive UTC (a zone appended to the text: a seventh of `replace`)
        try:
            return datetime.fromisoformat(value + "+00:00")
        except ValueError:  # text that carries a zone of its own
            return _utc(datetime.fromisoformat(value))
    return _utc(value)


def _utc(moment: datetime) -> datetime:
    """Aware UTC: a naive value is UTC already (SQLite keeps no zone)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class StorageState(sa.types.TypeDecorator[dict[str, Any]]):
    """The storage backend's state of an upload (JSON): SQLAlchemy's JSON, except that the empty
    state, which every upload in a local directory has, is written and read as a constant instead
    of through `json.dumps` / `json.loads` (a tenth of a POST's SQL time)."""

    impl = sa.JSON
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        general = self.impl_instance.bind_processor(dialect)
        if general is None:
            return None
        empty = general({})

        def process(value: Any) -> Any:
            return empty if value == {} else general(value)

        return process

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any] | None:
        general = self.impl_instance.result_processor(dialect, coltype)
        if general is None:
            return None  # the driver decodes JSON itself (asyncpg)

        def process(value: Any) -> Any:
            return {} if value == _EMPTY_JSON else general(value)

        return process


_EMPTY_JSON = "{}"


upload_table = sa.Table(
    "upload",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("length", sa.BigInteger, nullable=True),
    sa.Column("metadata", sa.Text, nullable=True),
    sa.Column("concat", sa.Text, nullable=True),
    sa.Column("storage", StorageState, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=True, index=True),
    sa.Column("completed_at", UTCDateTime, nullable=True),
    sa.Column("lock_owner", sa.String(128), nullable=True),
    sa.Column("lock_expires_at", UTCDateTime, nullable=True),
    sa.Column("release_requested", sa.Boolean, nullable=False),
    sa.Column("owner", sa.String(255), nullable=True),  # who may access it, as the pre-create hook said
    sa.Column("rejected_status", sa.Integer, nullable=True),  # a pre-finish hook refused it: its status
    sa.Column("rejected_reason", sa.Text, nullable=True),
)


hook_event_table = sa.Table(
    "hook_event",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # stable: receivers drop repeats by it
    sa.Column("sink", sa.String(32), nullable=False),  # the receiver: one row per event and receiver
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("upload_id", sa.String(64), nullable=False, index=True),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending, delivered, dead (past --hooks-max-age)
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("due_at", UTCDateTime, nullable=False),
    sa.Column("claimed_by", sa.String(128), nullable=True),
    sa.Column("claimed_until", UTCDateTime, nullable=True),
    sa.Column("finished_at", UTCDateTime, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Index("ix_hook_event_state_due_at", "state", "due_at"),
)


# The database's clock, for leases. Lease deadlines are written and compared only through these, never
# as Python datetimes, so every instance judges a lease by the same clock. SQLite keeps them as text in
# one fixed format (millisecond precision), which compares correctly as text.
_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"


class db_now(sa.sql.expression.FunctionElement[datetime]):
    """The database server's current time."""

    type = UTCDateTime()
    inherit_cache = True


class db_deadline(sa.sql.expression.FunctionElement[datetime]):
    """The database server's current time plus `seconds` (a lease's expiry)."""

    type = UTCDateTime()
    inherit_cache = True

    def __init__(self, seconds: float | sa.BindParameter[float]) -> None:
        super().__init__(seconds if isinstance(seconds, sa.BindParameter) else sa.literal(seconds, sa.Float))


@compiles(db_now)
def _now_default(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    return "now()"


@compiles(db_now, "sqlite")
def _now_sqlite(element: db_now, compiler: SQLCompiler, **kw: Any) -> str:
    return _SQLITE_NOW


@compiles(db_deadline)
def _deadline_default(element: db_deadline, compiler: SQLCompiler, **kw: Any) -> str:
    return f"(now() + {compiler.process(element.clauses, **kw)} * interval '1 second')"


@compiles(db_deadline, "sqlite")
def _deadline_sqlite(element: db_deadline, compiler: SQLCompiler, **kw: Any) -> str:
    seconds = compiler.process(element.clauses, **kw)
    return f"strftime('%Y-%m-%d %H:%M:%f', 'now', ({seconds}) || ' seconds')"
