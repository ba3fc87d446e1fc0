"""Storage backends behind one contract (see :mod:`.contract`)."""

from .base import StoredFile, UploadInfo, is_file_id, new_file_id
from .contract import (Adopts, ChecksHealth, Concatenates, ExpiresUploads, Health,
                       ListsUploads, LocalPaths, Lock, Locker, Presigns, Store, SweepsStale,
                       Upload, UploadWriter)
from .local import LocalStorage

Storage = Store  # the names the callers used before the contract
Writer = UploadWriter

__all__ = ["Adopts", "ChecksHealth", "Concatenates", "ExpiresUploads", "Health", "ListsUploads",
           "LocalPaths", "LocalStorage", "Lock", "Locker", "Presigns", "Storage", "Store",
           "StoredFile", "SweepsStale", "Upload", "UploadInfo", "UploadWriter", "Writer",
           "is_file_id", "new_file_id",
           "open_storage"]


def open_storage(settings) -> Store:
    """The backend SPILLWAY_STORAGE_URL names: ``s3://bucket/prefix`` (its bucket is
    checked now, so a wrong setting stops the start-up) or local disk."""
    url = settings.storage_url
    if url.startswith("s3://"):
        from .s3 import open_s3_storage

        return open_s3_storage(url, part_size=settings.s3_part_size,
                               timeout=settings.s3_timeout, lease_time=settings.lease_time,
                               redis_url=settings.redis_url, upload_ttl=settings.upload_ttl)
    directory = url.removeprefix("file://") if url else settings.storage_dir
    storage = LocalStorage(directory, fsync=settings.fsync, upload_ttl=settings.upload_ttl)
    storage.sweep_stale()
    return storage
