"""Storage backends: each implements `tusserver.core.Storage` for one kind of place to keep bytes."""

from tusserver.storage.local import LocalStorage

__all__ = ["LocalStorage"]
