"""Storage backends: each implements `tusserver.core.Storage` for one kind of place to keep bytes;
`make_storage` builds the one the settings ask for."""

from __future__ import annotations

from tusserver.config import Settings
from tusserver.core import Storage
from tusserver.storage.local import LocalStorage

__all__ = ["LocalStorage", "check_storage", "make_storage", "storage_problem"]


def check_storage(settings: Settings) -> None:
    """Raise ValueError at start-up for storage settings that cannot work."""
    if settings.storage != "local":
        from tusserver.storage.s3_client import MIN_PART_SIZE, parse_location

        parse_location(settings.storage, settings.s3_bucket, settings.s3_prefix)
        if settings.s3_part_size < MIN_PART_SIZE:
            raise ValueError("--s3-part-size must be at least 5M (S3's smallest part)")


def make_storage(settings: Settings) -> Storage:
    if settings.storage == "local":
        return LocalStorage(settings.uploads_dir, settings.fsync, settings.min_free_space)
    from tusserver.storage.s3 import S3Storage  # aiobotocore is imported only when S3 is used
    from tusserver.storage.s3_client import S3Client, parse_location

    return S3Storage(
        parse_location(settings.storage, settings.s3_bucket, settings.s3_prefix),
        S3Client(settings.s3_endpoint_url, settings.s3_region),
        settings.data_dir / "spool",
        settings.s3_part_size,
        settings.max_size,
    )


async def storage_problem(settings: Settings) -> str | None:
    """Start-up check of object storage: why its bucket cannot be used, or None (local storage is
    checked as the data directory)."""
    if settings.storage == "local":
        return None
    from tusserver.storage.s3 import S3Storage

    storage = make_storage(settings)
    assert isinstance(storage, S3Storage)
    try:
        return await storage.problem()
    finally:
        await storage.aclose()
