"""tusserver: a resumable upload server for the tus 1.0 protocol, with its state in SQL.

The public surface: `create_app` builds the ASGI application from `Settings`; `Upload`, `FinishEvent`
and the `Storage` / `Hook` protocols are what extensions and hooks see.
"""

from tusserver.app import create_app
from tusserver.config import Settings
from tusserver.core import FinishEvent, Hook, Storage, Upload

__all__ = ["FinishEvent", "Hook", "Settings", "Storage", "Upload", "create_app"]
