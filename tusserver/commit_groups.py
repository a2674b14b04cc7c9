"""Group commit: the writes that requests submit in one turn of the event loop run together, at the
end of that turn, and each request gets its own outcome back.

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


class CommitGroups:
    """Gathers the writes submitted in one turn of the event loop and starts them as one group when
    the turn ends (how, the subclasses say)."""

    def __init__(self) -> None:
        self._waiting: list[Sequence[PlannedStep]] = []
        self._futures: Futures = []
        self._running: asyncio.Task[None] | None = None

    def submit(self, steps: Sequence[PlannedStep]) -> asyncio.Future[Ran]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Ran] = loop.create_future()
        if not self._waiting and self._running is None:
            loop.call_soon(self._start)
        self._waiting.append(steps)
        self._futures.append(future)
        return future

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
    """Each group runs at the end of its turn, on the loop itself (SQLite: microseconds)."""

    def __init__(self, run: GroupRunner) -> None:
        super().__init__()
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
    one group runs make up the next) or over a round trip (each turn's group starts at once, so a
    group waiting on an unreachable database holds up no later one beyond its own timeout)."""

    def __init__(self, run: AsyncGroupRunner, one_at_a_time: bool) -> None:
        super().__init__()
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
