"""Upload locks: one writer per upload at a time.

:class:`FileLocker` spans the worker processes of one host: ``flock`` on a lock
file per upload, which the kernel releases when the holder's process dies, so a
killed worker never leaves an upload locked.  (A locker that spans hosts comes
with the shared S3 backend.)  :class:`MemoryLocker` spans the threads of one
process, for backends and tests without a shared directory.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time

from ..core.errors import Locked


def _locked(upload_id: str, timeout: float) -> Locked:
    return Locked(f"upload {upload_id} is busy: another request held its lock for "
                  f"more than {timeout:g} s")


class FileLock:
    def __init__(self, path: str, handle: int):
        self._path = path
        self._handle: int | None = handle

    def release(self) -> None:
        if self._handle is None:
            return
        # unlink while still holding it: a waiter that opened the old file sees, once it
        # gets the lock, that the path no longer names that file, and starts over
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass
        os.close(self._handle)
        self._handle = None

    def __enter__(self) -> "FileLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class FileLocker:
    def __init__(self, directory: str):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)

    def acquire(self, upload_id: str, timeout: float) -> FileLock:
        path = os.path.join(self.directory, f"{upload_id}.lock")
        deadline = time.monotonic() + timeout
        pause = 0.002
        while True:
            handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(handle)
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _locked(upload_id, timeout) from None
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.05)
                continue
            if _same_file(handle, path):
                return FileLock(path, handle)
            os.close(handle)  # released and unlinked under us: lock the new file


def _same_file(handle: int, path: str) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(handle)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


class MemoryLock:
    def __init__(self, locker: "MemoryLocker", upload_id: str):
        self._locker = locker
        self._id: str | None = upload_id

    def release(self) -> None:
        if self._id is not None:
            self._locker._release(self._id)
            self._id = None

    def __enter__(self) -> "MemoryLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class MemoryLocker:
    def __init__(self):
        self._changed = threading.Condition()
        self._held: set[str] = set()

    def acquire(self, upload_id: str, timeout: float) -> MemoryLock:
        with self._changed:
            if not self._changed.wait_for(lambda: upload_id not in self._held, timeout):
                raise _locked(upload_id, timeout)
            self._held.add(upload_id)
        return MemoryLock(self, upload_id)

    def _release(self, upload_id: str) -> None:
        with self._changed:
            self._held.discard(upload_id)
            self._changed.notify_all()
