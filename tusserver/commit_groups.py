"""Group commit: the writes that requests submit within a few turns of the event loop run together,
at the end of the last of those turns, and each request gets its own outcome back.

The database runner decides what a group is and how it runs (`sqlite_groups.run_group`: one SQLite
transaction; `pg_direct`: single-row INSERTs of one statement in one round trip); this module only
gathers the members, starts their group and hands the outcomes back. A group that could not run as a
whole answers `Regroup` to each of its members, which then run alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from tusserver.prepared import Params, Plan, Ran

PlannedStep = tuple[Plan, Params]
Members = Sequence[Sequence[PlannedStep]]
"""Per request in a group, its steps."""
Outcomes = list[Ran | BaseException]
"""Per request in a group, what its steps gave back or the error they met."""


class Regroup(Exception):
    """The group this request's writes were in did not run as a whole: run them again, alone."""


GroupRunner = Callable[[Members], Outcomes]
AsyncGroupRunner = Callable[[Members], Awaitable[Outcomes]]
Futures = list[asyncio.Future[Ran]]

GATHER_TURNS = 3
"""The turns of the event loop a group gathers writes over, counted from its first write's, where
the group runs on the loop or over a round trip (SQLite without `--fsync`; PostgreSQL's shared
INSERTs and lookups). Under load the requests of one turn are a few of those in flight: the
answers of one turn leave together, so their clients' next requests arrive together in a later
one. A group that also waits for the next two turns takes in more of them. W3 (16 connections
looping POST + HEAD, 8 s runs alternating 1 and 3 turns, four pairs, SQLite): 3.7 -> 12.1 writes a
commit, 4,273-4,627 -> 4,988-5,408 cycles/s, 0.214-0.233 -> 0.184-0.199 ms of server CPU a cycle;
PostgreSQL (three pairs): 3,508-3,934 -> 3,804-4,504 cycles/s. A lone write waits for two idle
turns of the loop more, microseconds: one connection's POST p50 stayed 0.29 ms."""


class CommitGroups:
    """Gathers the writes submitted in `turns` turns of the event loop, counted from the turn of the
    group's first write, and starts them as one group when the last of those turns ends (how, the
    subclasses say)."""

    def __init__(self, turns: int) -> None:
        self._waiting: list[Sequence[PlannedStep]] = []
        self._futures: Futures = []
        self._running: asyncio.Task[None] | None = None
        self._turns = turns
        self._turns_waited = 0

    def submit(self, steps: Sequence[PlannedStep]) -> asyncio.Future[Ran]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Ran] = loop.create_future()
        if not self._waiting and self._running is None:
            loop.call_soon(self._end_of_turn)
        self._waiting.append(steps)
        self._futures.append(future)
        return future

    def _end_of_turn(self) -> None:
        self._turns_waited += 1
        if self._turns_waited < self._turns:
            asyncio.get_running_loop().call_soon(self._end_of_turn)
            return
        self._turns_waited = 0
        self._start()

    def _start(self) -> None:
        raise NotImplementedError

    def _take(self) -> tuple[list[Sequence[PlannedStep]], Futures]:
        """What waits, less the writes whose requests were cancelled meanwhile: they never run."""
        members, futures = self._waiting, self._futures
        self._waiting, self._futures = [], []
        if any(future.done() for future in futures):
            kept = [pair for pair in zip(members, futures, strict=True) if not pair[1].done()]
            members, futures = [steps for steps, _ in kept], [future for _, future in kept]
        return members, futures


class LoopCommitGroups(CommitGroups):
    """Each group runs at the end of its last turn, on the loop itself (SQLite: microseconds)."""

    def __init__(self, run: GroupRunner, turns: int = GATHER_TURNS) -> None:
        super().__init__(turns)
        self._run = run

    def _start(self) -> None:
        members, futures = self._take()
        if not members:
            return
        try:
            outcomes = self._run(members)
        except Exception as exc:  # no connection to run them on
            outcomes = [exc] * len(members)
        _settle(futures, outcomes)


class AwaitedCommitGroups(CommitGroups):
    """Groups that are awaited: in a database thread (`one_at_a_time`: the writes submitted while
    one group runs make up the next) or over a round trip (each group starts when its turns end,
    so a group waiting on an unreachable database holds up no later one beyond its own timeout)."""

    def __init__(self, run: AsyncGroupRunner, one_at_a_time: bool, turns: int = GATHER_TURNS) -> None:
        super().__init__(turns)
        self._run = run
        self._one_at_a_time = one_at_a_time
        self._tasks: set[asyncio.Task[None]] = set()

    def _start(self) -> None:
        members, futures = self._take()
        if not members:
            return
        task = asyncio.create_task(self._run_groups(members, futures))
        if self._one_at_a_time:
            self._running = task
        else:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_groups(self, members: Members, futures: Futures) -> None:
        try:
            while members:
                try:
                    outcomes = await self._run(members)
                except Exception as exc:  # it could not run at all (no connection, shutting down)
                    outcomes = [exc] * len(members)
                _settle(futures, outcomes)
                members, futures = self._take() if self._one_at_a_time else ([], [])
        finally:
            if self._one_at_a_time:
                self._running = None
            for future in futures:  # cancelled (the loop is closing): so are the requests waiting
                future.cancel()


def _settle(futures: Futures, outcomes: Outcomes) -> None:
    for future, outcome in zip(futures, outcomes, strict=True):
        if future.done():  # its request was cancelled while the group ran
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
