"""Lifecycle hooks: which receivers get which events, and how.

`Hooks` is what the upload service talks to:
- `durable(kind, ...)` gives the outbox inserts for every receiver of a durable event, which
  `UploadRecords` runs in the transaction of the state change (see `outbox.py`); `committed()` then
  wakes the dispatcher, so delivery starts at once in the normal case.
- `before(kind, ...)` runs a blocking hook (pre-access, pre-create, pre-finish, pre-terminate) inline:
  its answer may refuse the request (`HookRejected`, with the hook's status, body and headers) or, for
  pre-create, change the new upload's ID and metadata and name its owner.

Receivers: `--on-finish package.module:function` (a Python callable, post-finish), `--webhook-url`
(tusserver's JSON, post-finish), `--hooks-http` (tusd v2's hook protocol, see `tusd_hooks.py`) and
`--hooks-python package.module:object` (`PythonHooks`: a method per event, typed `HookEvent`s).
Post-finish is not sent for partial uploads of a concatenation (only for the final one).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib
import inspect
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from math import inf
from typing import TYPE_CHECKING, Any, Protocol

from tusserver.core import FinishEvent, Upload
from tusserver.errors import ServiceUnavailable, TusError
from tusserver.events import DURABLE, EventType, RequestInfo, event_payload, finish_event
from tusserver.outbox import Dispatcher, Sink, insert_step
from tusserver.statements import RETRY_AFTER_SECONDS, Step

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

FinishFunction = Callable[[FinishEvent], object]
_MAX_PROGRESS_IN_FLIGHT = 100
_PRIVATE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})
"""Left out of stored (durable) events: secrets do not rest in the outbox."""


def load_callable(spec: str) -> FinishFunction:
    """`package.module:function` -> the function; ValueError if it cannot be found."""
    target = load_object(spec)
    if not callable(target):
        raise ValueError(f"hook {spec!r} is not callable")
    return target


class HookRejected(TusError):
    """A blocking hook refused the request; it answers with the hook's status, body and headers."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message, headers)
        self.status = status


@dataclass(frozen=True)
class HookAnswer:
    """What a blocking hook decided."""

    reject: bool = False
    status: int | None = None
    body: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    new_id: str | None = None
    new_metadata: Mapping[str, str] | None = None
    owner: str | None = None
    """pre-create: who the new upload belongs to (its `owner`, shown to pre-access hooks)."""
    stop: bool = False
    """post-receive: stop the request writing this upload and terminate the upload (tusd's
    `StopUpload`); `status`, `body` and `headers` then answer that request."""


class BlockingHooks(Protocol):
    """A receiver that can answer for the server (tusd's HTTP hooks, a Python object)."""

    async def call(self, kind: EventType, payload: Mapping[str, Any]) -> HookAnswer: ...

    async def aclose(self) -> None: ...


class CallableSink:
    """`--on-finish`: a Python callable given the `FinishEvent` (sync ones run in a worker thread)."""

    def __init__(self, function: FinishFunction) -> None:
        self._function = function

    async def deliver(self, payload: Mapping[str, Any]) -> None:
        event = finish_event(payload)
        if inspect.iscoroutinefunction(self._function):
            await self._function(event)
            return
        result = await asyncio.to_thread(self._function, event)
        if inspect.isawaitable(result):
            await result


HOOK_THREADS = 8
"""Threads for sync `--hooks-python` methods: as many may run at once."""
EVENT_ID_HEADER = "Tusserver-Event-Id"
SIGNATURE_HEADER = "Tusserver-Signature"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The `v1` value of the signature header: HMAC-SHA256 over `<timestamp>.<body>`, hex."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def request_headers(event_id: str, body: bytes, secret: str | None) -> dict[str, str]:
    """The headers of a hook request (`--hooks-http` and `--webhook-url` alike): JSON, the event's
    stable ID, and with `--hooks-secret` the signature of exactly these body bytes."""
    headers = {"Content-Type": "application/json", EVENT_ID_HEADER: event_id}
    if secret:
        timestamp = str(int(time.time()))
        headers[SIGNATURE_HEADER] = f"t={timestamp},v1={signature(secret, timestamp, body)}"
    return headers


class WebhookSink:
    """`--webhook-url`: tusserver's own JSON (`FinishEvent.as_json`) plus the event ID, POSTed (and
    signed with `--hooks-secret`)."""

    def __init__(self, url: str, timeout: float, secret: str | None = None) -> None:
        import httpx  # loaded only when a webhook is configured

        self._url = url
        self._secret = secret
        self._client: httpx.AsyncClient = httpx.AsyncClient(timeout=timeout)

    async def deliver(self, payload: Mapping[str, Any]) -> None:
        event_id = str(payload["EventID"])
        body = json.dumps({**finish_event(payload).as_json(), "event_id": event_id}).encode()
        headers = request_headers(event_id, body, self._secret)
        headers["Tus-Event-Id"] = event_id  # the name earlier releases sent
        response = await self._client.post(self._url, content=body, headers=headers)
        response.raise_for_status()

    async def aclose(self) -> None:
        await self._client.aclose()


@dataclass(frozen=True)
class HookEvent:
    """What a `--hooks-python` object's methods receive."""

    id: str
    type: EventType
    upload: Upload
    """For pre-create: the upload about to be created (its `id` is still empty); for pre-access: the
    upload as stored (with its `owner`), or an empty one for a POST."""
    metadata: Mapping[str, str]
    storage: Mapping[str, str]
    request: RequestInfo | None


class PythonHooks:
    """`--hooks-python package.module:object`: an object with a method per event it wants, named
    after the event (`pre_create`, `post_finish`, ...), sync or async. A blocking method refuses by
    returning `HookAnswer(reject=True, ...)` or raising `HookRejected`; pre-create may return
    `HookAnswer(new_id=..., new_metadata=..., owner=...)`.

    A blocking method that raises anything else, or takes longer than `timeout` seconds
    (`--hook-timeout`), answers the request `503` + `Retry-After`, as an HTTP hook receiver that
    fails or does not answer in time does; the error is logged with its traceback (a failing
    post-receive, which is best effort and frequent, with one warning line). Sync methods run in
    `HOOK_THREADS` threads of their own; a sync method past its time keeps its thread until it
    returns (Python cannot stop a thread), and while every thread is taken, calls answer 503 at
    once instead of queueing behind them."""

    def __init__(self, target: object, timeout: float | None = None) -> None:
        self._target = target
        self._timeout = timeout
        self.events = frozenset(kind for kind in EventType if callable(getattr(target, _method(kind), None)))
        self._threads: ThreadPoolExecutor | None = None
        self._free_threads = threading.BoundedSemaphore(HOOK_THREADS)

    async def call(self, kind: EventType, payload: Mapping[str, Any]) -> HookAnswer:
        upload_id = payload["Upload"]["ID"] or "-"
        deadline = asyncio.timeout(self._timeout)
        try:
            async with deadline:
                answer = await self._invoke(kind, payload)
        except TusError:
            raise  # HookRejected, or an answer the hook chose
        except TimeoutError as exc:
            if not deadline.expired():  # the hook's own (a socket timeout inside it, say)
                raise self._failed(kind, upload_id, exc) from None
            log.warning("hook_timeout type=%s upload_id=%s timeout_s=%s", kind, upload_id, self._timeout)
            raise ServiceUnavailable(
                f"the {kind} hook did not answer in time, retry later", {"Retry-After": RETRY_AFTER_SECONDS}
            ) from None
        except Exception as exc:
            raise self._failed(kind, upload_id, exc) from None
        return answer if isinstance(answer, HookAnswer) else HookAnswer()

    def _failed(self, kind: EventType, upload_id: str, exc: Exception) -> ServiceUnavailable:
        if kind is EventType.POST_RECEIVE:
            log.warning(
                "hook_failed type=%s upload_id=%s error=%s: %s", kind, upload_id, type(exc).__name__, exc
            )
        else:
            log.error("hook_failed type=%s upload_id=%s", kind, upload_id, exc_info=exc)
        return ServiceUnavailable(
            f"the {kind} hook failed, retry later", {"Retry-After": RETRY_AFTER_SECONDS}
        )

    async def deliver(self, payload: Mapping[str, Any]) -> None:
        await self._invoke(EventType(payload["Type"]), payload)

    async def _invoke(self, kind: EventType, payload: Mapping[str, Any]) -> object:
        method = getattr(self._target, _method(kind))
        event = hook_event(payload)
        if inspect.iscoroutinefunction(method):
            return await method(event)
        if not self._free_threads.acquire(blocking=False):
            raise ServiceUnavailable(
                f"every thread for Python hooks is busy ({HOOK_THREADS}), retry later",
                {"Retry-After": RETRY_AFTER_SECONDS},
            )
        if self._threads is None:
            self._threads = ThreadPoolExecutor(HOOK_THREADS, thread_name_prefix="tusserver-hooks")
        result = await asyncio.wrap_future(self._threads.submit(self._run_freeing, method, event))
        return await result if inspect.isawaitable(result) else result

    def _run_freeing(self, method: Callable[[HookEvent], object], event: HookEvent) -> object:
        try:
            return method(event)
        finally:
            self._free_threads.release()

    async def aclose(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)


def _method(kind: EventType) -> str:
    return kind.value.replace("-", "_")


def hook_event(payload: Mapping[str, Any]) -> HookEvent:
    finish = finish_event(payload)
    http = payload["HTTPRequest"]
    request = (
        RequestInfo(http["Method"], http["URI"], http["RemoteAddr"], http["Header"])
        if http["Method"]
        else None
    )
    return HookEvent(
        payload["EventID"],
        EventType(payload["Type"]),
        finish.upload,
        finish.metadata,
        finish.storage,
        request,
    )


def load_object(spec: str) -> object:
    """`package.module:object` -> the object; ValueError if it cannot be found."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"hook must look like package.module:object, got {spec!r}")
    try:
        target: object = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load hook {spec!r}: {exc}") from exc
    return target


@dataclass
class Route:
    """One durable receiver: its sink and the events it takes."""

    sink: Sink
    events: frozenset[EventType]


class Hooks:
    def __init__(
        self,
        routes: Mapping[str, Route] | None = None,
        blocking: Sequence[tuple[BlockingHooks, frozenset[EventType]]] = (),
        progress: Sequence[BlockingHooks] = (),
        progress_interval: float = 1.0,
    ) -> None:
        self.routes = dict(routes or {})
        self._blocking = list(blocking)
        self._blocked = frozenset().union(*(events for _, events in self._blocking))
        self._wanted = self._blocked.union(*(route.events for route in self.routes.values()))
        """Asked of every request; receivers are fixed from here on."""
        self._progress = list(progress)
        self._progress_interval = progress_interval
        self._last_progress: dict[str, float] = {}
        self._progress_tasks: set[asyncio.Task[None]] = set()
        self._dispatcher: Dispatcher | None = None
        self.stop_upload: Callable[[str, HookAnswer], object] | None = None
        """Set by the upload service: stops a request writing an upload when post-receive says so."""

    @property
    def sinks(self) -> dict[str, Sink]:
        return {name: route.sink for name, route in self.routes.items()}

    @property
    def active(self) -> bool:
        """Whether any receiver listens to anything (else requests skip collecting what hooks see)."""
        return bool(self.routes or self._blocking or self._progress)

    @property
    def reports_progress(self) -> bool:
        return bool(self._progress)

    def attach(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    def blocks(self, kind: EventType) -> bool:
        """Whether a blocking hook listens for `kind` (`before` would ask it)."""
        return kind in self._blocked

    def wants(self, kind: EventType) -> bool:
        return kind in self._wanted

    def durable(
        self, kind: EventType, upload: Upload, storage: Mapping[str, str], request: RequestInfo | None
    ) -> list[Step]:
        """Outbox inserts for every receiver of `kind` (none if nobody listens)."""
        assert kind in DURABLE
        names = [name for name, route in self.routes.items() if kind in route.events]
        if not names or (kind is EventType.POST_FINISH and upload.is_partial):
            return []
        payload = event_payload(kind, upload, storage, _without_secrets(request))
        return [insert_step(name, payload) for name in names]

    def committed(self) -> None:
        """Events were committed: deliver them now."""
        if self._dispatcher is not None:
            self._dispatcher.poke()

    def progressed(self, upload: Upload, storage: Mapping[str, str], request: RequestInfo | None) -> None:
        """post-receive, best effort: at most one per upload per progress interval (and one when it
        completes), sent in the background, never retried, dropped when too many are in flight."""
        if not self._progress:
            return
        now = time.monotonic()
        if (
            not upload.is_complete
            and now - self._last_progress.get(upload.id, -inf) < self._progress_interval
        ):
            return
        if upload.is_complete:
            self._last_progress.pop(upload.id, None)
        else:
            self._last_progress[upload.id] = now
        if len(self._progress_tasks) >= _MAX_PROGRESS_IN_FLIGHT:
            return
        payload = event_payload(EventType.POST_RECEIVE, upload, storage, _without_secrets(request))
        for sink in self._progress:
            task = asyncio.create_task(self._send_progress(sink, payload))
            self._progress_tasks.add(task)
            task.add_done_callback(self._progress_tasks.discard)

    async def _send_progress(self, receiver: BlockingHooks, payload: Mapping[str, Any]) -> None:
        upload_id = payload["Upload"]["ID"]
        try:
            answer = await receiver.call(EventType.POST_RECEIVE, payload)
        except Exception as exc:
            log.info("hook_progress_dropped upload_id=%s error=%s", upload_id, type(exc).__name__)
            return
        if answer.stop and self.stop_upload is not None:
            log.info("hook_stopped_upload upload_id=%s", upload_id)
            self.stop_upload(upload_id, answer)

    async def before(
        self, kind: EventType, upload: Upload, storage: Mapping[str, str], request: RequestInfo | None
    ) -> HookAnswer:
        """Run the blocking hooks for `kind` in turn, if any listens; raise `HookRejected` when one
        refuses. What they change (pre-create) is merged, the later one winning."""
        merged = HookAnswer()
        listening = [hooks for hooks, events in self._blocking if kind in events]
        if not listening:
            return merged
        payload = event_payload(kind, upload, storage, request)
        for hooks in listening:
            answer = await hooks.call(kind, payload)
            if answer.reject:
                status = answer.status or (403 if kind is EventType.PRE_ACCESS else 400)
                message = answer.body or f"refused by the {kind} hook"
                log.info("hook_rejected type=%s upload_id=%s status=%d", kind, upload.id or "-", status)
                raise HookRejected(status, message, answer.headers)
            merged = HookAnswer(
                new_id=answer.new_id or merged.new_id,
                new_metadata=answer.new_metadata if answer.new_metadata is not None else merged.new_metadata,
                owner=answer.owner or merged.owner,
            )
        return merged

    async def aclose(self) -> None:
        for route in self.routes.values():
            closer = getattr(route.sink, "aclose", None)
            if closer is not None:
                await closer()
        for task in list(self._progress_tasks):
            task.cancel()
        await asyncio.gather(*self._progress_tasks, return_exceptions=True)
        for hooks, _ in self._blocking:
            await hooks.aclose()


def _without_secrets(request: RequestInfo | None) -> RequestInfo | None:
    if request is None:
        return None
    kept = {name: values for name, values in request.headers.items() if name.lower() not in _PRIVATE_HEADERS}
    return RequestInfo(request.method, request.uri, request.remote_addr, kept)


def parse_events(text: str) -> frozenset[EventType]:
    """`pre-create,post-finish` -> the event types; ValueError for an unknown name."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    try:
        return frozenset(EventType(name) for name in names)
    except ValueError:
        known = ", ".join(kind.value for kind in EventType)
        raise ValueError(f"unknown hook event in {text!r} (known: {known})") from None


def finish_routes(
    on_finish: FinishFunction | None, webhook_url: str | None, timeout: float, secret: str | None = None
) -> dict[str, Route]:
    """The `--on-finish` and `--webhook-url` shortcuts, as post-finish receivers on the outbox."""
    routes: dict[str, Route] = {}
    if on_finish is not None:
        routes["on-finish"] = Route(CallableSink(on_finish), frozenset({EventType.POST_FINISH}))
    if webhook_url:
        sink = WebhookSink(webhook_url, timeout, secret)
        routes["webhook"] = Route(sink, frozenset({EventType.POST_FINISH}))
    return routes


__all__: Sequence[str] = [
    "HookAnswer", "HookEvent", "HookRejected", "Hooks", "PythonHooks", "Route",
    "load_callable", "parse_events",
]  # fmt: skip
