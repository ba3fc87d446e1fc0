"""Storage backends behind one narrow interface (see :mod:`.base`)."""

from .base import Storage, StoredFile, Writer, is_file_id, new_file_id
from .local import LocalStorage

__all__ = ["LocalStorage", "Storage", "StoredFile", "Writer", "is_file_id", "new_file_id",
           "open_storage"]


def open_storage(settings) -> Storage:
    """The backend the settings ask for (local disk is the only one so far)."""
    storage = LocalStorage(settings.storage_dir, fsync=settings.fsync)
    storage.sweep_stale()
    return storage
