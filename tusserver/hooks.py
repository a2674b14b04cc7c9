"""Lifecycle hooks: a Python callable and/or a webhook, run in the background.

`HookRunner` owns the background tasks: a hook can neither fail nor delay the request that triggered
it, every failure is logged with the upload ID, and shutdown waits a bounded time for deliveries in
flight. `CallableHook` imports `package.module:function` (sync functions run in a worker thread);
`WebhookHook` POSTs the event as JSON, retrying a few times.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence

import httpx

from tusserver.core import FinishEvent, Hook

log = logging.getLogger(__name__)

FinishFunction = Callable[[FinishEvent], object]


def load_callable(spec: str) -> FinishFunction:
    """`package.module:function` -> the function; ValueError if it cannot be found."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"hook must look like package.module:function, got {spec!r}")
    try:
        target: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load hook {spec!r}: {exc}") from exc
    if not callable(target):
        raise ValueError(f"hook {spec!r} is not callable")
    return target


class CallableHook:
    def __init__(self, function: FinishFunction) -> None:
        self._function = function

    async def on_finish(self, event: FinishEvent) -> None:
        if inspect.iscoroutinefunction(self._function):
            await self._function(event)
            return
        result = await asyncio.to_thread(self._function, event)
        if inspect.isawaitable(result):
            await result


class WebhookHook:
    def __init__(self, url: str, timeout: float, attempts: int = 3) -> None:
        self._url = url
        self._timeout = timeout
        self._attempts = attempts

    async def on_finish(self, event: FinishEvent) -> None:
        async with httpx.AsyncClient(timeout=self._timeout) as client:
            for attempt in range(1, self._attempts + 1):
                try:
                    response = await client.post(self._url, json=event.as_json())
                    response.raise_for_status()
                    return
                except httpx.HTTPError:
                    if attempt == self._attempts:
                        raise
                    await asyncio.sleep(attempt)


class HookRunner:
    """Fires hooks as background tasks owned by the application's lifespan."""

    def __init__(self, hooks: Sequence[Hook]) -> None:
        self._hooks = list(hooks)
        self._tasks: set[asyncio.Task[None]] = set()

    def finished(self, event: FinishEvent) -> None:
        for hook in self._hooks:
            self._spawn(hook.on_finish(event), event.upload.id, type(hook).__name__)

    def _spawn(self, work: Awaitable[None], upload_id: str, hook_name: str) -> None:
        task = asyncio.create_task(self._guarded(work, upload_id, hook_name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, work: Awaitable[None], upload_id: str, hook_name: str) -> None:
        try:
            await work
            log.info("hook_done hook=%s upload_id=%s", hook_name, upload_id)
        except Exception:
            log.exception("hook_failed hook=%s upload_id=%s", hook_name, upload_id)

    async def aclose(self, grace: float) -> None:
        """Wait up to `grace` seconds for running hooks, then cancel the rest."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
