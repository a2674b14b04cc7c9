"""`Policy`: the limits and lifetimes that apply to every upload, from the settings.

Pure values and one rule (when an upload expires); no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from tusserver.core import Upload


@dataclass(frozen=True)
class Policy:
    """Limits and lifetimes that apply to every upload."""

    max_size: int | None = None
    expire_after: timedelta | None = timedelta(hours=24)
    """Lifetime of an unfinished upload, renewed by each append; None: never expires."""
    retain_finished: timedelta | None = None
    """Lifetime of a finished upload; None: kept until deleted."""
    commit_every: float = 2.0
    """Seconds between offset commits while one long request streams (what a crash can lose)."""

    def expires_at(self, upload: Upload, now: datetime) -> datetime | None:
        lifetime = self.retain_finished if upload.completed_at else self.expire_after
        return None if lifetime is None else now + lifetime
