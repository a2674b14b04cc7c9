"""Hook events as data: their types, what each carries, and its JSON forms.

An event is built once, when the state change that causes it happens, and stored as `payload` (JSON)
in the outbox with that change, so that a delivery after a restart sends exactly what the request saw.
`tusd_body` renders the payload as tusd v2's HTTP hook request (`{"Type", "Event": {"Upload",
"HTTPRequest"}}`), so that a hook receiver written for tusd works unchanged; `finish_event` rebuilds
the `FinishEvent` that `--on-finish` callables and `--webhook-url` receive. No I/O here.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from tusserver.core import FinishEvent, Upload
from tusserver.protocol import metadata_text, parse_concat


class EventType(StrEnum):
    PRE_ACCESS = "pre-access"
    PRE_CREATE = "pre-create"
    POST_CREATE = "post-create"
    POST_RECEIVE = "post-receive"
    PRE_FINISH = "pre-finish"
    POST_FINISH = "post-finish"
    PRE_TERMINATE = "pre-terminate"
    POST_TERMINATE = "post-terminate"


BLOCKING = frozenset(
    {EventType.PRE_ACCESS, EventType.PRE_CREATE, EventType.PRE_FINISH, EventType.PRE_TERMINATE}
)
"""Awaited inline: the hook's answer decides the request's."""
DURABLE = frozenset({EventType.POST_CREATE, EventType.POST_FINISH, EventType.POST_TERMINATE})
"""Written to the outbox with the state change: delivered at least once."""


@dataclass(frozen=True)
class RequestInfo:
    """The HTTP request an event came from, as hooks see it."""

    method: str
    uri: str
    remote_addr: str
    headers: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "Method": self.method,
            "URI": self.uri,
            "RemoteAddr": self.remote_addr,
            "Header": {name: list(values) for name, values in self.headers.items()},
        }


def new_event_id() -> str:
    return secrets.token_hex(16)


def event_payload(
    kind: EventType,
    upload: Upload,
    storage: Mapping[str, str],
    request: RequestInfo | None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """What the outbox stores for one event (and what pre-hooks are sent, built the same way)."""
    return {
        "EventID": event_id or new_event_id(),
        "Type": str(kind),
        "Upload": _upload_json(upload, storage),
        "HTTPRequest": request.as_json() if request is not None else _NO_REQUEST,
        "Snapshot": _snapshot(upload, storage),
    }


def _snapshot(upload: Upload, storage: Mapping[str, str]) -> dict[str, Any]:
    """The upload as committed, and where its bytes are: enough to rebuild the event after a restart."""
    return {
        "id": upload.id,
        "offset": upload.offset,
        "length": upload.length,
        "metadata": upload.metadata,
        "concat": upload.concat,
        "created_at": upload.created_at.isoformat(),
        "updated_at": upload.updated_at.isoformat(),
        "completed_at": _iso(upload.completed_at),
        "owner": upload.owner,
        "location": dict(storage),
    }


_NO_REQUEST: dict[str, Any] = {"Method": "", "URI": "", "RemoteAddr": "", "Header": {}}


def _upload_json(upload: Upload, storage: Mapping[str, str]) -> dict[str, Any]:
    """tusd's `FileInfo`, plus `Owner` and `Rejected` (by a pre-finish hook) only when they are set."""
    concat = parse_concat(upload.concat) if upload.concat else None
    described: dict[str, Any] = {
        "ID": upload.id,
        "Size": upload.length if upload.length is not None else 0,
        "SizeIsDeferred": upload.length is None,
        "Offset": upload.offset,
        "MetaData": dict(metadata_text(upload.metadata)),
        "IsPartial": bool(concat and not concat.is_final),
        "IsFinal": bool(concat and concat.is_final),
        "PartialUploads": list(concat.parts) if concat and concat.is_final else None,
        "Storage": _tusd_storage(storage),
    }
    if upload.owner is not None:
        described["Owner"] = upload.owner
    if upload.is_rejected:
        described["Rejected"] = {"StatusCode": upload.rejected_status, "Reason": upload.rejected_reason or ""}
    return described


def _tusd_storage(storage: Mapping[str, str]) -> dict[str, str]:
    if storage.get("type") == "local":
        return {"Type": "filestore", "Path": storage.get("path", "")}
    return {key.capitalize(): value for key, value in storage.items()}


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def tusd_body(payload: Mapping[str, Any]) -> dict[str, Any]:
    """tusd v2's hook request body: `{"Type": ..., "Event": {"Upload": ..., "HTTPRequest": ...}}`."""
    return {
        "Type": payload["Type"],
        "Event": {"Upload": payload["Upload"], "HTTPRequest": payload["HTTPRequest"]},
    }


def finish_event(payload: Mapping[str, Any]) -> FinishEvent:
    """The `FinishEvent` of `--on-finish` / `--webhook-url` for a stored post-finish payload."""
    snapshot = payload["Snapshot"]
    completed = snapshot["completed_at"]
    upload = Upload(
        id=snapshot["id"],
        offset=snapshot["offset"],
        length=snapshot["length"],
        metadata=snapshot["metadata"],
        concat=snapshot["concat"],
        created_at=datetime.fromisoformat(snapshot["created_at"]),
        updated_at=datetime.fromisoformat(snapshot["updated_at"]),
        completed_at=datetime.fromisoformat(completed) if completed else None,
        owner=snapshot.get("owner"),
    )
    return FinishEvent(upload, dict(metadata_text(upload.metadata)), dict(snapshot["location"]))
