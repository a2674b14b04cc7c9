"""The SQL schema of upload state, as SQLAlchemy Core objects.

This describes the tables for queries; the database itself is only ever built by the Alembic revisions
in `migrations/`, and a test checks that the two agree. All timestamps are UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

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
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


upload_table = sa.Table(
    "upload",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("length", sa.BigInteger, nullable=True),
    sa.Column("metadata", sa.Text, nullable=True),
    sa.Column("concat", sa.Text, nullable=True),
    sa.Column("storage", sa.JSON, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=True, index=True),
    sa.Column("completed_at", UTCDateTime, nullable=True),
    sa.Column("lock_owner", sa.String(128), nullable=True),
    sa.Column("lock_expires_at", UTCDateTime, nullable=True),
    sa.Column("release_requested", sa.Boolean, nullable=False),
)
