"""Storage backends behind one contract (see :mod:`.contract`)."""

from .base import StoredFile, UploadInfo, is_file_id, new_file_id
from .contract import (Adopts, ChecksHealth, Concatenates, ExpiresUploads, Health, LocalPaths,
                       Lock, Locker, Presigns, Store, SweepsStale, Upload, UploadWriter)
from .local import LocalStorage

Storage = Store  # the names the callers used before the contract
Writer = UploadWriter

__all__ = ["Adopts", "ChecksHealth", "Concatenates", "ExpiresUploads", "Health", "LocalPaths",
           "LocalStorage", "Lock", "Locker", "Presigns", "Storage", "Store", "StoredFile",
           "SweepsStale", "Upload", "UploadInfo", "UploadWriter", "Writer", "is_file_id", "new_file_id",
           "open_storage"]


def open_storage(settings) -> Store:
    """The backend the settings ask for (local disk is the only one so far)."""
    storage = LocalStorage(settings.storage_dir, fsync=settings.fsync,
                           upload_ttl=settings.upload_ttl)
    storage.sweep_stale()
    return storage
