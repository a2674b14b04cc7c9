"""`Policy`: the limits and lifetimes that apply to every upload, and the two rules that use them.

`advanced` is the one place that computes an upload's next state after bytes arrived (offset,
completion, sliding expiry); `is_expired` is the one expiry rule, used by HEAD, PATCH, the sweeper and
the commit. Pure values and functions; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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
    max_concat_parts: int = 1000
    """Most partial uploads one final upload may name, repeats included."""
    keep_partials: bool = False
    """Keep partial uploads once a final upload has assembled them (default: delete them)."""

    def expires_at(self, upload: Upload, now: datetime) -> datetime | None:
        return self.lifetime_end(upload.completed_at is not None, now)

    def lifetime_end(self, complete: bool, now: datetime) -> datetime | None:
        """When an upload (complete or not) last touched at `now` expires; None: never."""
        lifetime = self.retain_finished if complete else self.expire_after
        return None if lifetime is None else now + lifetime

    def advanced(self, upload: Upload, written: int, now: datetime) -> Upload:
        """`upload` after `written` more bytes were stored at `now`: offset, completion (once) and
        the sliding expiry (E-6)."""
        offset = upload.offset + written
        completed_at = upload.completed_at
        if completed_at is None and offset == upload.length:
            completed_at = now
        return replace(
            upload,
            offset=offset,
            updated_at=now,
            completed_at=completed_at,
            expires_at=self.lifetime_end(completed_at is not None, now),
        )

    def room(self, upload: Upload) -> int | None:
        """How many more bytes `upload` may take (None: no limit)."""
        cap = upload.length if upload.length is not None else self.max_size
        return None if cap is None else max(cap - upload.offset, 0)


def is_expired(upload: Upload, now: datetime) -> bool:
    """The one expiry rule: an upload whose `expires_at` has passed is gone (410), cleaned up or not."""
    return upload.expires_at is not None and upload.expires_at <= now
