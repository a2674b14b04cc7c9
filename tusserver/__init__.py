"""tusserver: a resumable upload server for the tus 1.0 protocol, with its state in SQL.

The public surface: `create_app` builds the ASGI application from `Settings`; `Upload`, `FinishEvent`
(`--on-finish`), `HookEvent`, `HookAnswer` and `HookRejected` (`--hooks-python`) and the `Storage`
protocol are what extensions and hooks see.
"""

from tusserver.app import create_app
from tusserver.config import Settings
from tusserver.core import FinishEvent, Storage, Upload
from tusserver.hooks import HookAnswer, HookEvent, HookRejected

__all__ = [
    "FinishEvent",
    "HookAnswer",
    "HookEvent",
    "HookRejected",
    "Settings",
    "Storage",
    "Upload",
    "create_app",
]
