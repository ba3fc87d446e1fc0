"""Local-directory storage: temp file, optional fsync, atomic rename.

Layout under the storage directory::

    tmp/<id>.part     bytes of an upload in flight (same filesystem, so rename is atomic)
    blobs/<id>        committed bytes
    meta/<id>.json    committed metadata; a file exists for readers iff this exists

Metadata lives in one small JSON sidecar per file rather than in SQLite: it is
written by the same temp-then-rename step as the data, so a crash never leaves a
record pointing at half a file; several gunicorn/uwsgi workers (or hosts sharing
a network filesystem) need no database lock; and it maps one-to-one onto the
object-plus-metadata-object layout the S3 backend will use.
"""

from __future__ import annotations

import errno
import json
import os
import time
from typing import BinaryIO

from ..errors import InsufficientStorage, NotFound
from .base import StoredFile, is_file_id, new_file_id

_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
STALE_AFTER_SECONDS = 24 * 3600


def _no_room(error: OSError) -> InsufficientStorage:
    return InsufficientStorage(f"no room left on the storage volume ({error.strerror})")


def _fsync_path(path: str) -> None:
    """fsync a file, or a directory to make a rename in it durable."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _unlink_quietly(*paths: str) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


class LocalWriter:
    def __init__(self, storage: "LocalStorage", file_id: str):
        self._storage = storage
        self.id = file_id
        self.offset = 0
        self._path = storage.temp_path(file_id)
        self._file = open(self._path, "xb", buffering=0)

    def write(self, chunk: bytes) -> None:
        try:
            # a raw (unbuffered) file may write less than asked; loop until done
            view = memoryview(chunk)
            while view:
                written = self._file.write(view)
                view = view[written:]
        except OSError as error:
            if error.errno in _NO_ROOM:
                self.abort()
                raise _no_room(error) from error
            raise
        self.offset += len(chunk)

    def commit(self, *, filename: str, content_type: str, sha256: str) -> StoredFile:
        stored = StoredFile(
            id=self.id,
            filename=filename,
            size=self.offset,
            sha256=sha256,
            content_type=content_type,
            created=time.time(),
        )
        try:
            if self._storage.fsync:
                os.fsync(self._file.fileno())
            self._file.close()
            os.rename(self._path, self._storage.blob_path(self.id))
            if self._storage.fsync:
                _fsync_path(os.path.dirname(self._storage.blob_path(self.id)))
            self._storage.write_meta(stored)
        except BaseException as error:
            self.abort()
            if isinstance(error, OSError) and error.errno in _NO_ROOM:
                raise _no_room(error) from error
            raise
        return stored

    def abort(self) -> None:
        self._file.close()
        _unlink_quietly(self._path, self._storage.blob_path(self.id))


class LocalStorage:
    def __init__(self, root: str, *, fsync: bool = False):
        self.root = os.path.abspath(root)
        self.fsync = fsync
        self.file_mode = 0o666 & ~_current_umask()  # what open() gives the files we write
        for name in ("tmp", "blobs", "meta"):
            os.makedirs(os.path.join(self.root, name), exist_ok=True)

    # paths -----------------------------------------------------------------
    def temp_path(self, file_id: str) -> str:
        return os.path.join(self.root, "tmp", f"{file_id}.part")

    def blob_path(self, file_id: str) -> str:
        return os.path.join(self.root, "blobs", file_id)

    def meta_path(self, file_id: str) -> str:
        return os.path.join(self.root, "meta", f"{file_id}.json")

    # interface -------------------------------------------------------------
    def open_writer(self) -> LocalWriter:
        try:
            return LocalWriter(self, new_file_id())
        except OSError as error:
            if error.errno in _NO_ROOM:
                raise _no_room(error) from error
            raise

    def open_reader(self, file_id: str) -> BinaryIO:
        self._check_id(file_id)
        try:
            return open(self.blob_path(file_id), "rb")
        except FileNotFoundError:
            raise NotFound(f"no file with id {file_id}") from None

    def stat(self, file_id: str) -> StoredFile:
        self._check_id(file_id)
        try:
            with open(self.meta_path(file_id), encoding="utf-8") as handle:
                return StoredFile.from_record(json.load(handle))
        except FileNotFoundError:
            raise NotFound(f"no file with id {file_id}") from None

    def list(self, *, after: str | None = None, limit: int = 100) -> list[StoredFile]:
        ids = sorted(
            name[:-5] for name in os.listdir(os.path.join(self.root, "meta"))
            if name.endswith(".json") and is_file_id(name[:-5])
        )
        if after:
            ids = [file_id for file_id in ids if file_id > after]
        found = []
        for file_id in ids:
            if len(found) == limit:
                break
            try:
                found.append(self.stat(file_id))
            except NotFound:  # deleted while we listed
                continue
        return found

    def delete(self, file_id: str) -> None:
        self._check_id(file_id)
        try:
            os.unlink(self.meta_path(file_id))  # invisible from here on
        except FileNotFoundError:
            raise NotFound(f"no file with id {file_id}") from None
        try:
            os.unlink(self.blob_path(file_id))
        except FileNotFoundError:
            pass

    def adopt(self, path: str, *, filename: str, content_type: str,
              sha256: str) -> StoredFile | None:
        """Rename ``path`` into ``blobs/`` (atomic; None when it is on another filesystem)."""
        file_id = new_file_id()
        blob = self.blob_path(file_id)
        try:
            if self.fsync:
                _fsync_path(path)
            os.rename(path, blob)
        except OSError as error:
            if error.errno == errno.EXDEV:
                return None
            if error.errno in _NO_ROOM:  # fsync may report a full disk
                raise _no_room(error) from error
            raise
        try:
            # nginx creates its temp files 0600; give the blob the mode our own files get
            os.chmod(blob, self.file_mode)
            stored = StoredFile(id=file_id, filename=filename, size=os.stat(blob).st_size,
                                sha256=sha256, content_type=content_type, created=time.time())
            if self.fsync:
                _fsync_path(os.path.dirname(blob))
            self.write_meta(stored)
        except BaseException as error:
            _unlink_quietly(blob)
            if isinstance(error, OSError) and error.errno in _NO_ROOM:
                raise _no_room(error) from error
            raise
        return stored

    # helpers ---------------------------------------------------------------
    def write_meta(self, stored: StoredFile) -> None:
        """Publish ``stored``'s metadata; on any failure neither it nor its temp file is left."""
        final = self.meta_path(stored.id)
        temp = self.temp_path(stored.id) + ".json"
        published = False
        try:
            with open(temp, "w", encoding="utf-8") as handle:
                json.dump(stored.to_record(), handle)
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.rename(temp, final)
            published = True
            if self.fsync:
                _fsync_path(os.path.dirname(final))
        except BaseException:
            # the caller reports the commit as failed, so the file must not appear either
            _unlink_quietly(temp, *([final] if published else []))
            raise

    def sweep_stale(self, older_than: float = STALE_AFTER_SECONDS) -> int:
        """Remove temp files and metadata-less blobs a crash left behind."""
        cutoff = time.time() - older_than
        removed = 0
        for folder, orphan in (("tmp", lambda name: True),
                               ("blobs", lambda name: not os.path.exists(self.meta_path(name)))):
            directory = os.path.join(self.root, folder)
            for entry in os.scandir(directory):
                try:
                    if entry.stat().st_mtime < cutoff and orphan(entry.name):
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed

    @staticmethod
    def _check_id(file_id: str) -> None:
        if not is_file_id(file_id):
            raise NotFound(f"no file with id {file_id}")
