"""`--hooks-http URL`: tusd v2's HTTP hook protocol, so that a hook receiver written for tusd works.

Each hook is a POST of `{"Type": "post-finish", "Event": {"Upload": {...}, "HTTPRequest": {...}}}`
(see `events.py`). For a blocking hook the receiver answers `200` with a JSON object that may hold
`RejectUpload` (pre-create, pre-finish), `RejectTermination` (pre-terminate), `RejectAccess`
(pre-access, our addition), `StopUpload` (post-receive: stop the PATCH writing the upload, then
terminate it), `HTTPResponse` (`StatusCode`, `Body`, `Header`: the answer to the client
when rejecting) and `ChangeFileInfo` (`ID`, `MetaData`, and our `Owner`: pre-create); an empty answer
accepts. A receiver that cannot
be reached or answers anything but 2xx fails the hook: a blocking hook then answers the client `503`
+ `Retry-After`, a durable one is retried.

Every request carries `Tusserver-Event-Id` (the same on every retry of an event) and, with
`--hooks-secret`, `Tusserver-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">` so that a
receiver can check it came from this server. `--hooks-http-forward-headers` names request headers
copied onto the hook request (tusd's flag of the same name).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from tusserver.errors import ServiceUnavailable
from tusserver.events import EventType, tusd_body
from tusserver.hooks import HookAnswer, request_headers
from tusserver.statements import RETRY_AFTER_SECONDS

log = logging.getLogger(__name__)


class HookFailed(Exception):
    """The receiver could not be reached or did not answer 2xx."""


class TusdHttpHooks:
    def __init__(
        self, url: str, timeout: float, secret: str | None = None, forward_headers: Sequence[str] = ()
    ) -> None:
        self._url = url
        self._secret = secret
        self._forward = [name.lower() for name in forward_headers]
        self._client = httpx.AsyncClient(timeout=timeout)

    async def deliver(self, payload: Mapping[str, Any]) -> None:
        """A durable (post-) hook: any 2xx is success; its answer is not used (as in tusd)."""
        await self._post(payload)

    async def call(self, kind: EventType, payload: Mapping[str, Any]) -> HookAnswer:
        try:
            response = await self._post(payload)
        except HookFailed as exc:
            log.warning("hook_unavailable type=%s error=%s", kind, exc)
            raise ServiceUnavailable(
                f"the {kind} hook is unavailable, retry later", {"Retry-After": RETRY_AFTER_SECONDS}
            ) from None
        return _answer(kind, response)

    async def _post(self, payload: Mapping[str, Any]) -> httpx.Response:
        body = json.dumps(tusd_body(payload)).encode()
        headers = request_headers(str(payload["EventID"]), body, self._secret)
        sent_with = {name.lower(): values for name, values in payload["HTTPRequest"]["Header"].items()}
        for name in self._forward:
            if sent_with.get(name):
                headers[name] = ", ".join(sent_with[name])
        try:
            response = await self._client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise HookFailed(f"{type(exc).__name__}: {exc}") from exc
        if not response.is_success:
            raise HookFailed(f"the hook receiver answered {response.status_code}")
        return response

    async def aclose(self) -> None:
        await self._client.aclose()


def _answer(kind: EventType, response: httpx.Response) -> HookAnswer:
    """The receiver's JSON, read as tusd (Go) reads it: field names in any case; `Header` or, as in
    tusd's own example receiver, `Headers`."""
    try:
        data = response.json() if response.content.strip() else {}
    except ValueError:
        data = {}
    answer = _fields(data)
    http = _fields(answer.get("httpresponse"))
    change = _fields(answer.get("changefileinfo"))
    reject_flag = {
        EventType.PRE_CREATE: "rejectupload",
        EventType.PRE_FINISH: "rejectupload",
        EventType.PRE_TERMINATE: "rejecttermination",
        EventType.PRE_ACCESS: "rejectaccess",
    }.get(kind)
    status = http.get("statuscode")
    headers = _fields(http.get("header") or http.get("headers"))
    metadata = change.get("metadata")
    return HookAnswer(
        reject=bool(reject_flag and answer.get(reject_flag)),
        status=status if isinstance(status, int) and 200 <= status <= 599 else None,
        body=str(http.get("body") or ""),
        headers={str(name): str(value) for name, value in headers.items()},
        new_id=str(change["id"]) if change.get("id") else None,
        new_metadata={str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else None,
        owner=str(change["owner"]) if change.get("owner") else None,
        stop=kind is EventType.POST_RECEIVE and bool(answer.get("stopupload")),
    )


def _fields(value: object) -> dict[str, Any]:
    """A JSON object with its keys lowercased (anything else: empty)."""
    return {str(key).lower(): item for key, item in value.items()} if isinstance(value, dict) else {}
