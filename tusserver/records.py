"""Upload state in SQL: `UploadRecords`, one statement (its own transaction) per call.

Owns every query on the `upload` table, including the lease columns that `locking.py` builds on.
Offsets only move through a compare-and-set on (offset, lock owner), so a writer that lost its lease
can never commit. Lease deadlines are computed and compared by the database's clock (`db_now`), never a
host's, so clock skew between instances cannot make two writers believe they hold the same upload.
Statements run through `statements.py`, which picks the cheapest path per database and translates
failures into `ServiceUnavailable` (503).
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from tusserver.core import Upload
from tusserver.errors import UploadNotFound
from tusserver.outbox import PREPARED as OUTBOX_STATEMENTS
from tusserver.schema import db_deadline, db_now, upload_table
from tusserver.statements import SqliteRunner, StatementRunner, Step

log = logging.getLogger(__name__)
_t = upload_table.c
_UPLOAD_COLUMNS = (
    _t.id, _t.offset, _t.length, _t.metadata, _t.concat, _t.storage,
    _t.created_at, _t.updated_at, _t.expires_at, _t.completed_at,
    _t.owner, _t.rejected_status, _t.rejected_reason,
)  # fmt: skip
_UPLOAD_FIELDS = operator.attrgetter(*(field.name for field in fields(Upload)))
_UPLOAD_SET_KEYS = tuple(f"set_{field.name}" for field in fields(Upload))
"""The INSERT's parameter for each field of `_UPLOAD_FIELDS`: copied shallowly, in one C call
(`dataclasses.asdict` deep-copies: 7 % of a POST)."""
_RENEW_BATCH = 500  # leases per renewal statement (well under every backend's bound-parameter limit)
_p = sa.bindparam


def _set(column: str) -> sa.BindParameter[Any]:
    """A bound value for a SET clause (names must differ from the columns')."""
    return _p(f"set_{column}", type_=upload_table.c[column].type)


# Statements are built once: SQLAlchemy then reuses their compiled form and cache key, which costs a
# fraction of building a statement per call on the per-request path.
_ID = _t.id == _p("upload_id")
_FREE = sa.or_(_t.lock_owner.is_(None), _t.lock_expires_at < db_now())
_TTL = db_deadline(_p("ttl", type_=sa.Float))
_HELD = sa.case((_t.lock_owner.is_(None), sa.false()), else_=_t.lock_expires_at > db_now()).label("held")
"""Whether a live lease is held. A CASE, so that SQLite reads the clock only for a leased row (an
AND evaluates both sides): about a microsecond of a HEAD's lookup."""
_GET = sa.select(*_UPLOAD_COLUMNS, _HELD).where(_ID)
_GET_MANY = sa.select(*_UPLOAD_COLUMNS, _HELD).where(
    _t.id == sa.any_(_p("upload_ids", type_=sa.ARRAY(sa.String)))
)  # PostgreSQL: the `_GET`s of a few loop turns in one round trip (`pg_direct.KeyLookup`)
_EXISTS = sa.select(_t.id).where(_ID)
_ACQUIRE = (
    sa.update(upload_table)
    .where(_ID, _FREE)
    .values(lock_owner=_p("holder"), lock_expires_at=_TTL, release_requested=False)
    .returning(*_UPLOAD_COLUMNS)
)
_ASK_RELEASE = sa.update(upload_table).where(_ID, _t.lock_owner.is_not(None)).values(release_requested=True)
_RENEW = (  # found by primary key: matching on lock_owner alone, which has no index, scanned the table
    sa.update(upload_table)
    .where(_t.id.in_(_p("upload_ids", expanding=True)), _t.lock_owner.in_(_p("owners", expanding=True)))
    .values(lock_expires_at=_TTL)
    .returning(_t.lock_owner, _t.release_requested)
)
_OWNED = sa.and_(_ID, _t.lock_owner == _p("holder"))
_RELEASE = (
    sa.update(upload_table)
    .where(_OWNED)
    .values(lock_owner=None, lock_expires_at=None, release_requested=False)
)
_PROGRESS = {
    name: _set(name)
    for name in (
        "offset", "length", "updated_at", "expires_at", "completed_at", "storage",
        "rejected_status", "rejected_reason",
    )
}  # fmt: skip
_COMMIT_WHERE = (_ID, _t.offset == _p("old_offset"), _t.lock_owner == _p("holder"))
# No RETURNING: the new state is the one this instance computed; only whether the row matched counts.
_COMMIT_RELEASE = (
    sa.update(upload_table)
    .where(*_COMMIT_WHERE)
    .values(**_PROGRESS, lock_owner=None, lock_expires_at=None, release_requested=False)
)
_COMMIT_KEEP = sa.update(upload_table).where(*_COMMIT_WHERE).values(**_PROGRESS, lock_expires_at=_TTL)
_ALL = {column.name: _set(column.name) for column in upload_table.c}
_INSERT = sa.insert(upload_table).values(**_ALL)
_INSERT_LEASED = sa.insert(upload_table).values(**{**_ALL, "lock_expires_at": _TTL})
_FORGET = sa.delete(upload_table).where(_ID)
_KNOWN = sa.select(_t.id).where(_t.id.in_(_p("upload_ids", expanding=True)))
_CREATED_BEFORE = (
    sa.select(_t.id)
    .where(_t.id > _p("after"), _t.created_at < _p("cutoff", type_=_t.created_at.type), _t.offset > 0)
    .order_by(_t.id)
    .limit(_p("limit", type_=sa.Integer))
)
_DELETE = sa.delete(upload_table).where(_OWNED)
_PING = sa.select(sa.literal(1).label("one"))
_IDLE_FIRST = (
    sa.select(*_UPLOAD_COLUMNS, _HELD)
    .where(_t.completed_at.is_(None))
    .order_by(_t.updated_at)
    .limit(_p("limit", type_=sa.Integer))
)
_PREPARED = (
    _GET, _EXISTS, _ACQUIRE, _ASK_RELEASE, _RELEASE, _COMMIT_RELEASE, _COMMIT_KEEP,
    _INSERT, _INSERT_LEASED, _FORGET, _DELETE, *OUTBOX_STATEMENTS,
)  # fmt: skip
"""The statements of every request, run on the database driver itself (`prepared.py`)."""


_INCOMPLETE = _t.completed_at.is_(None)
_SUMMARY = sa.select(
    sa.func.count().filter(_INCOMPLETE).label("incomplete"),
    sa.func.coalesce(sa.func.sum(_t.offset).filter(_INCOMPLETE), 0).label("incomplete_bytes"),
    sa.func.min(_t.created_at).filter(_INCOMPLETE).label("oldest_incomplete"),
    sa.func.count().filter(_t.expires_at <= _p("now", type_=_t.expires_at.type)).label("expired"),
    sa.func.coalesce(sa.func.sum(_t.offset), 0).label("stored_bytes"),
)


@dataclass(frozen=True)
class Summary:
    """What the upload table holds, for metrics (one aggregate query)."""

    incomplete: int
    incomplete_bytes: int
    oldest_incomplete: datetime | None
    expired: int
    """Uploads past their expiry that the sweeper has not deleted yet."""
    stored_bytes: int


def _to_upload(row: Any) -> Upload:
    """By position, in the order of `Upload`'s fields (checked below): built from keywords gathered
    by a comprehension, it took two and a half times as long."""
    v = row._mapping
    return Upload(
        v["id"], v["offset"], v["length"], v["created_at"], v["updated_at"], v["metadata"], v["concat"],
        v["expires_at"], v["completed_at"], v["storage"], v["owner"],
        v["rejected_status"], v["rejected_reason"],
    )  # fmt: skip


assert [field.name for field in fields(Upload)] == [
    "id", "offset", "length", "created_at", "updated_at", "metadata", "concat",
    "expires_at", "completed_at", "storage", "owner", "rejected_status", "rejected_reason",
], "_to_upload passes Upload's fields by position"  # fmt: skip


class UploadRecords:
    """Upload rows, on SQLite or PostgreSQL."""

    def __init__(
        self, engine: AsyncEngine, fsync: bool = False, timeout: float = 5.0, pool_size: int = 20
    ) -> None:
        """`timeout`: seconds a statement may take, connecting and waiting for a connection included
        (PostgreSQL; SQLite waits at most `statements.BUSY_PATIENCE` for a lock)."""
        self.engine = engine
        database = engine.url.database
        if engine.dialect.name == "sqlite" and database and database != ":memory:":
            self._runner: StatementRunner = SqliteRunner(database, fsync, _PREPARED)
        else:
            from tusserver.pg_direct import DirectRunner, KeyLookup  # asyncpg: loaded only here

            lookups = (KeyLookup(_GET, "upload_id", _GET_MANY, "upload_ids", "id"),)
            self._runner = DirectRunner(engine, _PREPARED, timeout, pool_size, lookups)

    async def close(self) -> None:
        await self._runner.close()

    async def _rows(self, statement: sa.Executable, **params: Any) -> Sequence[Any]:
        return (await self._runner.run(statement, params)).rows

    async def _count(self, statement: sa.Executable, **params: Any) -> int:
        return (await self._runner.run(statement, params)).rowcount

    @property
    def runner(self) -> StatementRunner:
        """The statement runner, shared with the hook outbox (`outbox.py`)."""
        return self._runner

    async def _run(self, statement: sa.Executable, params: dict[str, Any], events: Sequence[Step]) -> int:
        """One statement, with the hook events it causes in its transaction when there are any."""
        if events:
            return (await self._runner.run_guarded((statement, params), events)).rowcount
        return (await self._runner.run(statement, params)).rowcount

    async def add(
        self, upload: Upload, lock_owner: str | None = None, ttl: float = 0.0, events: Sequence[Step] = ()
    ) -> None:
        """Insert a new upload, optionally already leased to `lock_owner` for `ttl` seconds, with the
        outbox rows of `events` in the same transaction."""
        params: dict[str, Any] = dict(zip(_UPLOAD_SET_KEYS, _UPLOAD_FIELDS(upload), strict=True))
        params["set_storage"] = dict(upload.storage)
        params["set_lock_owner"] = lock_owner
        params["set_release_requested"] = False
        if lock_owner is None:
            params["set_lock_expires_at"] = None
            await self._run(_INSERT, params, events)
        else:
            params["ttl"] = ttl
            await self._run(_INSERT_LEASED, params, events)

    async def get(self, upload_id: str) -> Upload:
        return (await self.get_with_lock(upload_id))[0]

    async def get_with_lock(self, upload_id: str) -> tuple[Upload, bool]:
        """The upload, and whether a live lease is held on it (by the database's clock)."""
        rows = await self._rows(_GET, upload_id=upload_id)
        if not rows:
            raise UploadNotFound(upload_id)
        # by key: `row.held` on a prepared row goes through `__getattr__` (an exception each time)
        return _to_upload(rows[0]), bool(rows[0]._mapping["held"])

    async def acquire(
        self, upload_id: str, owner: str, ttl: float, ask_holder: bool = False
    ) -> Upload | None:
        """Take the lease for `ttl` seconds if it is free or expired (by the database's clock, so skew
        between hosts cannot hand a live lease to a second writer): the upload, or None while someone
        else holds it. With `ask_holder`, a refused request also asks the holder to let go (takeover).
        Raises `UploadNotFound` for an unknown upload."""
        rows = await self._rows(_ACQUIRE, upload_id=upload_id, holder=owner, ttl=ttl)
        if rows:
            return _to_upload(rows[0])
        asked = ask_holder and await self._count(_ASK_RELEASE, upload_id=upload_id) > 0
        if not asked and not await self._rows(_EXISTS, upload_id=upload_id):
            raise UploadNotFound(upload_id)
        return None

    async def request_release(self, upload_id: str) -> None:
        """Ask whoever holds the upload's lease to stop and let go."""
        await self._count(_ASK_RELEASE, upload_id=upload_id)

    async def renew(self, leases: Sequence[tuple[str, str]], ttl: float) -> dict[str, bool]:
        """Extend every lease of `leases` ((upload ID, owner) pairs) still held, in one statement per
        batch: owner -> whether another request asked it to let go. An owner missing from the answer
        has lost its lease. (Owners are unique per lease, so a row matches only its own owner.)"""
        answers: dict[str, bool] = {}
        for start in range(0, len(leases), _RENEW_BATCH):
            batch = leases[start : start + _RENEW_BATCH]
            upload_ids = [upload_id for upload_id, _ in batch]
            owners = [owner for _, owner in batch]
            rows = await self._rows(_RENEW, upload_ids=upload_ids, owners=owners, ttl=ttl)
            answers.update({row.lock_owner: bool(row.release_requested) for row in rows})
        return answers

    async def release(self, upload_id: str, owner: str) -> None:
        await self._count(_RELEASE, upload_id=upload_id, holder=owner)

    async def commit(
        self,
        upload: Upload,
        owner: str,
        old_offset: int,
        *,
        release: bool,
        ttl: float = 0.0,
        events: Sequence[Step] = (),
    ) -> Upload | None:
        """Compare-and-set: store `upload`'s offset, length, timestamps and storage state if the row
        is still at `old_offset` and leased to `owner`; then release the lease, or extend it by `ttl`
        (a checkpoint doubles as a renewal). `events` (outbox rows) commit with it or not at all.
        Returns `upload` as stored (every column it changes is set from it, so no row needs to come
        back), or None if that no longer holds."""
        params = {
            "upload_id": upload.id,
            "holder": owner,
            "old_offset": old_offset,
            "ttl": ttl,
            "set_offset": upload.offset,
            "set_length": upload.length,
            "set_updated_at": upload.updated_at,
            "set_expires_at": upload.expires_at,
            "set_completed_at": upload.completed_at,
            "set_storage": dict(upload.storage),
            "set_rejected_status": upload.rejected_status,
            "set_rejected_reason": upload.rejected_reason,
        }
        changed = await self._run(_COMMIT_RELEASE if release else _COMMIT_KEEP, params, events)
        return upload if changed else None

    async def forget(self, upload_id: str) -> None:
        """Delete the row whatever its lease (a creation whose storage could not be prepared)."""
        await self._count(_FORGET, upload_id=upload_id)

    async def expired_ids(self, now: datetime, limit: int) -> list[str]:
        """IDs of uploads whose `expires_at` has passed, oldest first."""
        query = sa.select(_t.id).where(_t.expires_at <= now).order_by(_t.expires_at).limit(limit)
        return [row.id for row in await self._rows(query)]

    async def known_ids(self, upload_ids: Sequence[str]) -> set[str]:
        """Which of `upload_ids` have a row."""
        if not upload_ids:
            return set()
        rows = await self._rows(_KNOWN, upload_ids=list(upload_ids))
        return {row.id for row in rows}

    async def ids_with_bytes_created_before(self, cutoff: datetime, after: str, limit: int) -> list[str]:
        """IDs above `after` (in ID order) of uploads created before `cutoff` that have committed
        bytes (whose storage must exist): a page of a full scan."""
        rows = await self._rows(_CREATED_BEFORE, cutoff=cutoff, after=after, limit=limit)
        return [row.id for row in rows]

    async def delete(self, upload_id: str, owner: str, events: Sequence[Step] = ()) -> bool:
        """Delete the row if `owner` holds its lease (with the outbox rows of `events`); False if it
        did not."""
        return await self._run(_DELETE, {"upload_id": upload_id, "holder": owner}, events) > 0

    async def summary(self, now: datetime) -> Summary:
        """Counts and sums over every upload (for `/metrics`, cached by the caller: a full scan)."""
        row = (await self._rows(_SUMMARY, now=now))[0]
        oldest = row.oldest_incomplete
        if isinstance(oldest, str):  # SQLite's MIN() may come back as the stored text
            oldest = datetime.fromisoformat(oldest)
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=UTC)
        return Summary(
            int(row.incomplete), int(row.incomplete_bytes), oldest, int(row.expired), int(row.stored_bytes)
        )

    async def incomplete(self, limit: int) -> list[tuple[Upload, bool]]:
        """Unfinished uploads, longest idle first, each with whether a lease is held on it now."""
        return [(_to_upload(row), bool(row.held)) for row in await self._rows(_IDLE_FIRST, limit=limit)]

    async def ping(self) -> None:
        """One trivial statement: raises `ServiceUnavailable` if the database cannot be reached."""
        await self._rows(_PING)

    def pool_in_use(self) -> int:
        """Database connections checked out right now (0 where there is no pool)."""
        in_use = getattr(self._runner, "in_use", None)
        return int(in_use()) if callable(in_use) else 0
