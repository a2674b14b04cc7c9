"""The hook outbox: durable events in SQL, and the dispatcher that delivers them at least once.

A durable event (post-create, post-finish, post-terminate) is one `hook_event` row per receiver
("sink"), inserted by `UploadRecords` **in the same transaction** as the state change that causes it
(`Outbox.insert_steps` builds those inserts): if the change commits, so does the event, and a killed
process cannot lose it. Every instance runs a `Dispatcher`: it claims due rows with a lease of its own
(`claimed_by` / `claimed_until`, judged by the database's clock; `SKIP LOCKED` on PostgreSQL), so two
instances never deliver the same row at the same time, delivers, and marks them delivered. One
upload's events reach a receiver in their order (post-create, post-finish, post-terminate): a later
one waits while an earlier one is pending (being retried), so a post-finish for a file that is gone
is always followed by its post-terminate. A failed
delivery is retried with exponential backoff and jitter until `--hooks-max-age`, then marked dead and
logged. A crash between a delivery and its mark means one more delivery: receivers drop repeats by
the event ID, which every attempt carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import sqlalchemy as sa

from tusserver import metrics
from tusserver.core import utcnow
from tusserver.errors import ServiceUnavailable
from tusserver.schema import db_deadline, db_now, hook_event_table
from tusserver.statements import StatementRunner, Step

log = logging.getLogger(__name__)
_e = hook_event_table.c
_p = sa.bindparam
PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
CLAIM_BATCH = 16
POLL_EVERY = 1.0
"""Seconds between two looks at the outbox when nothing woke the dispatcher (other instances' events,
retries coming due)."""

INSERT_EVENT = sa.insert(hook_event_table).values(
    id=_p("event_id"),
    sink=_p("sink"),
    type=_p("event_type"),
    upload_id=_p("event_upload_id"),
    payload=_p("payload", type_=_e.payload.type),
    state=PENDING,
    attempts=0,
    created_at=db_now(),
    due_at=db_now(),
)
_CLAIMABLE = sa.and_(
    _e.state == PENDING,
    _e.sink.in_(_p("sinks", expanding=True)),  # receivers this instance has; others wait for theirs
    _e.due_at <= db_now(),
    sa.or_(_e.claimed_until.is_(None), _e.claimed_until < db_now()),
)
_LIFECYCLE = {"post-create": 0, "post-finish": 1, "post-terminate": 2}
"""The order of one upload's durable events: a receiver never gets one before an earlier one."""
_older = hook_event_table.alias("older")
_WAITS_FOR_EARLIER = (
    sa.exists()
    .where(
        _older.c.upload_id == _e.upload_id,
        _older.c.sink == _e.sink,
        _older.c.state == PENDING,
        sa.case(_LIFECYCLE, value=_older.c.type, else_=3) < sa.case(_LIFECYCLE, value=_e.type, else_=3),
    )
    .correlate(hook_event_table)
)
_DUE = sa.select(_e.id).where(_CLAIMABLE, ~_WAITS_FOR_EARLIER).order_by(_e.due_at).limit(CLAIM_BATCH)
_CLAIM = (
    sa.update(hook_event_table)
    # repeated outside the subquery: PostgreSQL re-checks it on a row another instance just claimed
    .where(_e.id.in_(_DUE.with_for_update(skip_locked=True).scalar_subquery()), _CLAIMABLE)
    .values(
        claimed_by=_p("me"), claimed_until=db_deadline(_p("ttl", type_=sa.Float)), attempts=_e.attempts + 1
    )
    .returning(_e.id, _e.sink, _e.type, _e.upload_id, _e.payload, _e.attempts, _e.created_at)
)
_MINE = sa.and_(_e.id == _p("event_id"), _e.claimed_by == _p("me"))
_UNCLAIMED: dict[str, Any] = {"claimed_by": None, "claimed_until": None}
_DELIVERED = (
    sa.update(hook_event_table)
    .where(_MINE)
    .values(state=DELIVERED, finished_at=db_now(), last_error=None, **_UNCLAIMED)
)
_RETRY = (
    sa.update(hook_event_table)
    .where(_MINE)
    .values(due_at=db_deadline(_p("delay", type_=sa.Float)), last_error=_p("error"), **_UNCLAIMED)
)
_DEAD = (
    sa.update(hook_event_table)
    .where(_MINE)
    .values(state=DEAD, finished_at=db_now(), last_error=_p("error"), **_UNCLAIMED)
)
_AGAIN = {"state": PENDING, "due_at": db_now(), "attempts": 0, "finished_at": None, **_UNCLAIMED}
_RETRY_ONE = sa.update(hook_event_table).where(_e.id == _p("event_id"), _e.state != PENDING).values(**_AGAIN)
_RETRY_DEAD = sa.update(hook_event_table).where(_e.state == DEAD).values(**_AGAIN)
PREPARED = (INSERT_EVENT, _DELIVERED, _RETRY, _DEAD)
"""Statements run on the hot path (prepared once on PostgreSQL by `pg_direct`)."""


@dataclass(frozen=True)
class Claimed:
    """An event this dispatcher holds for delivery."""

    id: str
    sink: str
    type: str
    upload_id: str
    payload: Mapping[str, Any]
    attempts: int
    created_at: datetime


@dataclass(frozen=True)
class Listed:
    """An event as `tusserver hooks list` shows it."""

    id: str
    sink: str
    type: str
    upload_id: str
    state: str
    attempts: int
    created_at: datetime
    last_error: str | None


class Sink(Protocol):
    """A hook receiver of durable events: delivers one or raises (then it is retried)."""

    async def deliver(self, payload: Mapping[str, Any]) -> None: ...


def insert_step(sink: str, payload: Mapping[str, Any]) -> Step:
    """The INSERT of one event for one receiver, to run in the transaction of its state change."""
    return (
        INSERT_EVENT,
        {
            "event_id": f"{payload['EventID']}-{sink}",
            "sink": sink,
            "event_type": payload["Type"],
            "event_upload_id": payload["Upload"]["ID"],
            "payload": dict(payload),
        },
    )


class Outbox:
    """The outbox's rows: claim, and record how a delivery went."""

    def __init__(self, runner: StatementRunner) -> None:
        self._runner = runner

    async def claim(self, me: str, ttl: float, sinks: list[str]) -> list[Claimed]:
        ran = await self._runner.run(_CLAIM, {"me": me, "ttl": ttl, "sinks": sinks})
        return [
            Claimed(
                row.id,
                row.sink,
                row.type,
                row.upload_id,
                _as_mapping(row.payload),
                row.attempts,
                row.created_at,
            )
            for row in ran.rows
        ]

    async def delivered(self, event_id: str, me: str) -> None:
        await self._runner.run(_DELIVERED, {"event_id": event_id, "me": me})

    async def retry(self, event_id: str, me: str, delay: float, error: str) -> None:
        await self._runner.run(_RETRY, {"event_id": event_id, "me": me, "delay": delay, "error": error})

    async def dead(self, event_id: str, me: str, error: str) -> None:
        await self._runner.run(_DEAD, {"event_id": event_id, "me": me, "error": error})

    async def listing(self, states: Sequence[str], limit: int = 100) -> list[Listed]:
        """Events in `states`, oldest first (for `tusserver hooks list`)."""
        query = (
            sa.select(
                _e.id, _e.sink, _e.type, _e.upload_id, _e.state, _e.attempts, _e.created_at, _e.last_error
            )
            .where(_e.state.in_(list(states)))
            .order_by(_e.created_at)
            .limit(limit)
        )
        return [Listed(*row) for row in (await self._runner.run(query)).rows]

    async def backlog(self) -> dict[str, int]:
        """How many events are pending and dead (for `/metrics` and the operator page)."""
        query = (
            sa.select(_e.state, sa.func.count().label("events"))
            .where(_e.state.in_([PENDING, DEAD]))
            .group_by(_e.state)
        )
        counts = {PENDING: 0, DEAD: 0}
        counts.update({row.state: int(row.events) for row in (await self._runner.run(query)).rows})
        return counts

    async def again(self, event_id: str | None = None) -> int:
        """Deliver a delivered or dead event again (`event_id`), or every dead one (None): how many."""
        if event_id is None:
            return (await self._runner.run(_RETRY_DEAD)).rowcount
        return (await self._runner.run(_RETRY_ONE, {"event_id": event_id})).rowcount


def _as_mapping(value: Any) -> Mapping[str, Any]:
    return json.loads(value) if isinstance(value, str) else dict(value)


class Dispatcher:
    """Delivers the outbox's due events to their sinks, in this instance, until closed."""

    def __init__(
        self,
        outbox: Outbox,
        sinks: Mapping[str, Sink],
        me: str,
        timeout: float,
        max_age: timedelta,
        backoff_max: float,
    ) -> None:
        self._outbox = outbox
        self._sinks = dict(sinks)
        self._me = me
        self._timeout = timeout
        self._max_age = max_age
        self._backoff_max = backoff_max
        self._wake = asyncio.Event()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._closing = False

    def poke(self) -> None:
        """New events were committed here: look now instead of at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        while not self._closing:
            try:
                claimed = await self._outbox.claim(self._me, self._timeout + 2, list(self._sinks))
            except ServiceUnavailable:
                claimed = []
            except Exception:
                log.exception("hook_dispatch_failed")
                claimed = []
            for event in claimed:
                task = asyncio.create_task(self._deliver(event))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
            if len(claimed) == CLAIM_BATCH:
                continue  # more may be due
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_EVERY)

    async def _deliver(self, event: Claimed) -> None:
        sink = self._sinks[event.sink]
        try:
            async with asyncio.timeout(self._timeout):
                await sink.deliver(event.payload)
        except Exception as exc:  # a hook's failure never reaches anything but this log and the row
            await self._failed(
                event, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            )
            return
        metrics.hook_deliveries.labels("delivered").inc()
        try:
            await self._outbox.delivered(event.id, self._me)
        except ServiceUnavailable:  # delivered, but not marked: it will be delivered again
            log.warning("hook_delivered_unrecorded event_id=%s", event.id)
            return
        log.info("hook_delivered event_id=%s sink=%s type=%s upload_id=%s attempt=%d",
                 event.id, event.sink, event.type, event.upload_id, event.attempts)  # fmt: skip

    async def _failed(self, event: Claimed, error: str) -> None:
        try:
            if utcnow() - event.created_at > self._max_age:
                metrics.hook_deliveries.labels("dead").inc()
                await self._outbox.dead(event.id, self._me, error)
                log.error(
                    "hook_dead event_id=%s sink=%s type=%s upload_id=%s attempts=%d error=%s",
                    event.id, event.sink, event.type, event.upload_id, event.attempts, error,
                )  # fmt: skip
                return
            metrics.hook_deliveries.labels("retry").inc()
            delay = self.backoff(event.attempts)
            await self._outbox.retry(event.id, self._me, delay, error)
            log.warning(
                "hook_failed event_id=%s sink=%s upload_id=%s attempt=%d retry_in=%.1fs error=%s",
                event.id, event.sink, event.upload_id, event.attempts, delay, error,
            )  # fmt: skip
        except ServiceUnavailable:
            log.warning(
                "hook_failed_unrecorded event_id=%s (its claim expires, then it is retried)", event.id
            )

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt `attempts + 1`: doubling from 1 s up to the cap, with jitter."""
        ceiling = min(self._backoff_max, 2.0 ** max(attempts - 1, 0))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def aclose(self, grace: float) -> None:
        """Stop claiming; give deliveries in flight `grace` seconds, then cancel them (their claims
        expire and another instance, or the next start, delivers them)."""
        self._closing = True
        self._wake.set()
        if self._in_flight:
            _, pending = await asyncio.wait(set(self._in_flight), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
