"""Local-directory storage: uploads in ``tmp/``, files in ``blobs/``, metadata in an index.

Layout under the storage directory::

    tmp/<id>.part       bytes of an upload (same filesystem, so finishing is one rename)
    tmp/<id>.json       the upload's state: offset, length, metadata, SHA-256 state
    blobs/<id>          stored bytes
    index.sqlite3       stored files' metadata (:mod:`.index`); a file exists for
                        readers iff its row does
    locks/<id>.lock     upload locks (:class:`~.locks.FileLocker`)

A stored file's bytes are renamed into ``blobs/`` before its row is added, and
its row is removed before its bytes, so a reader never finds a row without
bytes; bytes without a row (a crash in between) are swept after a day.  Older
data directories (one ``meta/<id>.json`` per file) are migrated into the index
when the storage opens.
"""

from __future__ import annotations

import errno
import json
import os
import time
from typing import BinaryIO, Callable, Iterator, NoReturn

from ..core.errors import InsufficientStorage, Locked, NotFound
from .base import StoredFile, UploadInfo, is_file_id, new_file_id
from .contract import Health
from .index import MetadataIndex
from .local_uploads import (LocalUpload, LocalUploadWriter, concatenate_uploads,
                            read_file_range)
from .fs import current_umask, fsync_path, unlink_quietly
from .locks import FileLocker

_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
STALE_AFTER_SECONDS = 24 * 3600


class LocalStorage:
    def __init__(self, root: str, *, fsync: bool = False,
                 upload_ttl: float = STALE_AFTER_SECONDS):
        self.root = os.path.abspath(root)
        self.fsync = fsync
        self.upload_ttl = upload_ttl
        self.file_mode = 0o666 & ~current_umask()  # what open() gives the files we write
        for name in ("tmp", "blobs"):
            os.makedirs(os.path.join(self.root, name), exist_ok=True)
        self.index = MetadataIndex(os.path.join(self.root, "index.sqlite3"), fsync=fsync)
        self.index.migrate_json_folder(os.path.join(self.root, "meta"))
        self.locker = FileLocker(os.path.join(self.root, "locks"))

    # paths -----------------------------------------------------------------
    def temp_path(self, file_id: str) -> str:
        return os.path.join(self.root, "tmp", f"{file_id}.part")

    def state_path(self, file_id: str) -> str:
        return os.path.join(self.root, "tmp", f"{file_id}.json")

    def blob_path(self, file_id: str) -> str:
        return os.path.join(self.root, "blobs", file_id)

    # uploads ---------------------------------------------------------------
    def create_upload(self, *, length: int | None = None,
                      metadata: dict | None = None) -> LocalUpload:
        info = UploadInfo(id=new_file_id(), length=length, metadata=dict(metadata or {}),
                          created=time.time())
        try:
            with open(self.temp_path(info.id), "xb"):
                pass
            self.write_state(info.to_record())
        except BaseException as error:
            self.remove_upload(info.id)
            self.reraise(error)
        return LocalUpload(self, info.id)

    def get_upload(self, upload_id: str) -> LocalUpload:
        self._check_id(upload_id)
        upload = LocalUpload(self, upload_id)
        upload.info()  # NotFound unless it exists and is unfinished
        return upload

    def open_writer(self) -> LocalUploadWriter:
        return self.create_upload().writer(0)

    # stored files ----------------------------------------------------------
    def open_reader(self, file_id: str) -> BinaryIO:
        self._check_id(file_id)
        try:
            return open(self.blob_path(file_id), "rb")
        except FileNotFoundError:
            raise NotFound(f"no file with id {file_id}") from None

    def read_range(self, file_id: str, start: int = 0, stop: int | None = None,
                   chunk_size: int = 1 << 20) -> Iterator[bytes]:
        size = self.stat(file_id).size
        stop = size if stop is None else min(stop, size)
        return read_file_range(self.blob_path(file_id), start, stop, chunk_size)

    def stat(self, file_id: str) -> StoredFile:
        self._check_id(file_id)
        stored = self.index.get(file_id)
        if stored is None:
            raise NotFound(f"no file with id {file_id}")
        return stored

    def list(self, *, after: str | None = None, limit: int = 100) -> list[StoredFile]:
        return self.index.page(after, limit)

    def delete(self, file_id: str) -> None:
        self._check_id(file_id)
        if not self.index.remove(file_id):  # invisible from here on
            raise NotFound(f"no file with id {file_id}")
        unlink_quietly(self.blob_path(file_id))

    # capabilities ----------------------------------------------------------
    def adopt(self, path: str, *, filename: str, content_type: str,
              sha256: str) -> StoredFile | None:
        """Rename ``path`` into ``blobs/`` (atomic; None when it is on another filesystem)."""
        file_id = new_file_id()
        blob = self.blob_path(file_id)
        size = os.stat(path).st_size
        stored = StoredFile(id=file_id, filename=filename, size=size, sha256=sha256,
                            content_type=content_type, created=time.time())
        try:
            # journalled like a finishing upload, so a crash after the rename rolls forward
            self.write_state({"id": file_id, "created": stored.created,
                              "finished": stored.to_record()})
            if self.fsync:
                fsync_path(path)
            os.rename(path, blob)
        except BaseException as error:
            unlink_quietly(self.state_path(file_id))
            if isinstance(error, OSError) and error.errno == errno.EXDEV:
                return None
            self.reraise(error)
        try:
            # nginx creates its temp files 0600; give the blob the mode our own files get
            os.chmod(blob, self.file_mode)
            self.complete_finish(stored)
        except BaseException as error:
            self.remove_upload(file_id)
            self.reraise(error)
        return stored

    def concatenate(self, upload_ids: list[str], *, metadata: dict | None = None) -> LocalUpload:
        return concatenate_uploads(self, upload_ids, metadata)

    def list_uploads(self, *, after: str | None = None, limit: int = 100,
                     where: Callable[[UploadInfo], bool] | None = None) -> list[UploadInfo]:
        """Unfinished uploads in id (= creation) order after the cursor ``after``."""
        found: list[UploadInfo] = []
        for upload_id in sorted(self.upload_ids()):
            if len(found) >= limit:
                break
            if after is not None and upload_id <= after:
                continue
            try:
                info = LocalUpload(self, upload_id).info()
            except NotFound:  # finished or removed meanwhile
                continue
            if where is None or where(info):
                found.append(info)
        return found

    def delete_expired(self, now: float | None = None) -> int:
        """Terminate uploads nothing was written to for ``upload_ttl`` seconds."""
        now = time.time() if now is None else now
        removed = 0
        for upload_id in self.upload_ids():
            upload = LocalUpload(self, upload_id)
            try:
                if not upload.expired(now):
                    continue
                with self.locker.acquire(upload_id, timeout=0):
                    # again under the lock: an append may have ended in between, and
                    # appends check expiry under the lock too, so none revives it now
                    if upload.expired(now):
                        self.remove_upload(upload_id)
                        removed += 1
            except (NotFound, Locked):  # finished meanwhile, or being written to
                continue
        return removed

    def upload_ids(self) -> Iterator[str]:
        """Every unfinished upload's id, in no order (its state file is ``tmp/<id>.json``)."""
        names = os.listdir(os.path.join(self.root, "tmp"))
        return (n[:-5] for n in names if n.endswith(".json") and is_file_id(n[:-5]))

    def local_root(self) -> str:
        return os.path.join(self.root, "blobs")

    def local_path(self, file_id: str) -> str:
        self._check_id(file_id)
        return self.blob_path(file_id)

    def health(self) -> Health:
        probe = os.path.join(self.root, f".health-{os.getpid()}")
        try:
            with open(probe, "wb") as handle:
                handle.write(b"ok")
            os.unlink(probe)
        except OSError:
            return Health(False, "storage_not_writable")
        try:
            self.index.check()
        except Exception:
            return Health(False, "index_unavailable")
        return Health(True, "ok")

    # helpers ---------------------------------------------------------------
    def load_state(self, upload_id: str) -> dict | None:
        try:
            with open(self.state_path(upload_id), encoding="utf-8") as handle:
                return json.load(handle)
        except FileNotFoundError:
            return None

    def write_state(self, record: dict) -> None:
        final = self.state_path(record["id"])
        temp = final + ".new"
        try:
            with open(temp, "w", encoding="utf-8") as handle:
                json.dump(record, handle)
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.rename(temp, final)
            if self.fsync:
                fsync_path(os.path.dirname(final))
        except BaseException as error:
            unlink_quietly(temp)
            self.reraise(error)

    def complete_finish(self, stored: StoredFile) -> None:
        """Blob in place, row in the index, upload state gone (safe to repeat)."""
        try:
            part, blob = self.temp_path(stored.id), self.blob_path(stored.id)
            try:
                os.rename(part, blob)
            except FileNotFoundError:
                pass  # moved already: this is a repeat
            if self.fsync:
                fsync_path(os.path.dirname(blob))
            if os.path.exists(blob):
                self.index.add(stored)
            unlink_quietly(self.state_path(stored.id))
        except OSError as error:
            self.reraise(error)

    def remove_upload(self, upload_id: str) -> None:
        unlink_quietly(self.temp_path(upload_id))
        if self.index.get(upload_id) is None:  # never became a file
            unlink_quietly(self.blob_path(upload_id))
        unlink_quietly(self.state_path(upload_id))

    @staticmethod
    def reraise(error: BaseException) -> NoReturn:
        """Raise ``error`` again (call it in its ``except`` block), a full disk as 507."""
        if isinstance(error, OSError) and error.errno in _NO_ROOM:
            raise InsufficientStorage(
                f"no room left on the storage volume ({error.strerror})") from error
        raise error

    def sweep_stale(self, older_than: float = STALE_AFTER_SECONDS) -> int:
        """Finish what a crash interrupted; remove what it left behind."""
        removed = 0
        tmp = os.path.join(self.root, "tmp")
        for name in os.listdir(tmp):
            upload_id = name.partition(".")[0]
            record = self.load_state(upload_id) if name.endswith(".json") else None
            if record is not None and "finished" in record:
                try:  # not one a live request is finishing (it holds the lock meanwhile)
                    with self.locker.acquire(upload_id, timeout=0):
                        self.complete_finish(StoredFile.from_record(record["finished"]))
                except Locked:
                    continue
        cutoff = time.time() - older_than
        removed += self.delete_expired(time.time() + self.upload_ttl - older_than)
        for entry in os.scandir(tmp):  # bytes or temp files without a state
            upload_id = entry.name.partition(".")[0]
            try:
                if (not os.path.exists(self.state_path(upload_id))
                        and entry.stat().st_mtime < cutoff):
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        for entry in os.scandir(os.path.join(self.root, "blobs")):  # bytes without a row
            try:
                if entry.stat().st_mtime < cutoff and self.index.get(entry.name) is None \
                        and not os.path.exists(self.state_path(entry.name)):
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

    @staticmethod
    def _check_id(file_id: str) -> None:
        if not is_file_id(file_id):
            raise NotFound(f"no file with id {file_id}")

