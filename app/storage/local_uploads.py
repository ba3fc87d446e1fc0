"""Uploads on local disk: ``tmp/<id>.part`` holds the bytes, ``tmp/<id>.json`` the state.

The state (offset, declared length, metadata, saved SHA-256 state) is rewritten
atomically (temp file, rename) after the bytes it describes are written, so
after a crash the recorded offset is never ahead of the bytes; bytes beyond it
(an append cut short before it could save) are cut off when the next append
starts.  Finishing records the stored file in the state first, then renames the
bytes into ``blobs/`` and adds the metadata to the index; a crash in between is
rolled forward by :meth:`~app.storage.local.LocalStorage.sweep_stale`.
"""

from __future__ import annotations

import errno
import os
import time
from typing import TYPE_CHECKING, Iterator

from ..core.chunks import read_in_chunks
from ..core.errors import Conflict, NotFound, PayloadTooLarge
from ..core.sha256 import resume_sha256
from .base import StoredFile, UploadInfo
from .contract import OneShotWriter

if TYPE_CHECKING:
    from .local import LocalStorage


class LocalUpload:
    def __init__(self, store: "LocalStorage", upload_id: str):
        self._store = store
        self.id = upload_id

    def info(self) -> UploadInfo:
        record = self._store.load_state(self.id)
        if record is None or "finished" in record:
            raise NotFound(f"no upload with id {self.id}")
        info = UploadInfo.from_record(record)
        try:
            last_write = os.stat(self._store.temp_path(self.id)).st_mtime
        except FileNotFoundError:
            last_write = info.created
        return info.moved(expires=last_write + self._store.upload_ttl)

    def expired(self, now: float) -> bool:
        """Nothing was written for the store's upload_ttl (False once finished or gone)."""
        try:
            expires = self.info().expires
        except NotFound:
            return False
        return expires is not None and expires < now

    def writer(self, offset: int) -> "LocalUploadWriter":
        info = self.info()
        info.check_offset(offset)
        return LocalUploadWriter(self, info, self._store)

    def declare_length(self, length: int) -> None:
        info = self.info().with_length(length)
        self._store.write_state(info.moved(expires=None).to_record())

    def read(self, start: int = 0, stop: int | None = None,
             chunk_size: int = 1 << 20) -> Iterator[bytes]:
        recorded = self.info().offset
        stop = recorded if stop is None else min(stop, recorded)
        return read_file_range(self._store.temp_path(self.id), start, stop, chunk_size)

    def finish(self, *, filename: str | None = None, content_type: str | None = None,
               sha256: str | None = None) -> StoredFile:
        info = self.info()
        if info.length is not None and info.offset != info.length:
            raise Conflict(f"upload {self.id} holds {info.offset} of {info.length} bytes",
                           code="upload_incomplete")
        part = self._store.temp_path(self.id)
        if os.path.getsize(part) != info.offset:  # drop bytes an unsaved append left behind
            with open(part, "r+b") as handle:
                handle.truncate(info.offset)
        if sha256 is None:
            sha256 = resume_sha256(info.sha256_state,
                                   lambda: self.read(0, info.offset)).hexdigest()
        stored = StoredFile(id=self.id, filename=filename or info.filename, size=info.offset,
                            sha256=sha256, content_type=content_type or info.content_type,
                            created=time.time())
        self._store.write_state(info.to_record() | {"finished": stored.to_record()})
        self._store.complete_finish(stored)
        return stored

    def terminate(self) -> None:
        if self._store.load_state(self.id) is None:
            raise NotFound(f"no upload with id {self.id}")
        self._store.remove_upload(self.id)


class LocalUploadWriter(OneShotWriter):
    def __init__(self, upload: LocalUpload, info: UploadInfo, store: "LocalStorage"):
        self.upload = upload
        self.id = info.id
        self.offset = info.offset
        self.sha256_state = info.sha256_state
        self._info = info
        self._store = store
        self._path = store.temp_path(self.id)
        self._file = open(self._path, "r+b", buffering=0)
        try:
            # bytes after the last save are not the upload's.  Only when there are any:
            # ext4 (auto_da_alloc) flushes a file truncated to 0 when it is closed, which
            # made every upload wait for its whole body to reach the disk
            if os.fstat(self._file.fileno()).st_size != self.offset:
                self._file.truncate(self.offset)
            self._file.seek(self.offset)
        except BaseException:
            self._file.close()
            raise

    def write(self, chunk: bytes) -> None:
        length = self._info.length
        if length is not None and self.offset + len(chunk) > length:
            raise PayloadTooLarge(f"upload {self.id} is declared as {length} bytes",
                                  code="upload_length_exceeded")
        try:
            # a raw (unbuffered) file may write less than asked; loop until done
            view = memoryview(chunk)
            while view:
                written = self._file.write(view)
                view = view[written:]
        except OSError as error:
            self._store.reraise(error)
        self.offset += len(chunk)

    def save(self, sha256_state: str | None) -> UploadInfo:
        try:
            if self._store.fsync:
                os.fsync(self._file.fileno())
            info = self._info.moved(offset=self.offset, sha256_state=sha256_state, expires=None)
            self._store.write_state(info.to_record())
        except OSError as error:
            self._store.reraise(error)
        self._info = info
        return info

    def close(self) -> None:
        self._file.close()

    def abort(self) -> None:
        self.close()
        try:
            self.upload.terminate()
        except NotFound:  # already finished (and maybe deleted) or terminated
            pass


def read_file_range(path: str, start: int, stop: int, chunk_size: int) -> Iterator[bytes]:
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise NotFound("the upload's bytes are gone") from None
    with handle:
        handle.seek(start)
        yield from read_in_chunks(handle.read, stop - start, chunk_size)


def concatenate_uploads(store: "LocalStorage", upload_ids: list[str],
                        metadata: dict | None) -> LocalUpload:
    """A new upload with the given complete uploads' bytes in order.

    The kernel copies the bytes (copy_file_range: none pass through Python, and a
    filesystem that shares blocks clones them).  The SHA-256 continues the first
    part's saved state, but the parts after the first are read once to hash them:
    SHA-256 states cannot be joined, only continued.
    """
    parts = [store.get_upload(upload_id) for upload_id in upload_ids]
    infos = [part.info() for part in parts]
    for info in infos:
        if info.length is None or info.offset != info.length:
            raise Conflict(f"upload {info.id} is not complete", code="upload_incomplete")
    combined = store.create_upload(metadata=metadata)
    try:
        hasher = resume_sha256(infos[0].sha256_state, lambda: parts[0].read())
        with open(store.temp_path(combined.id), "r+b") as out:
            for part, info in zip(parts, infos):
                _copy_bytes(store.temp_path(part.id), out.fileno(), info.offset)
                if part is not parts[0]:
                    for chunk in part.read():
                        hasher.update(chunk)
            if store.fsync:
                os.fsync(out.fileno())
        total = sum(info.offset for info in infos)
        state = combined.info().moved(offset=total, length=total, sha256_state=hasher.state())
        store.write_state(state.to_record())
    except BaseException as error:
        store.remove_upload(combined.id)
        store.reraise(error)
    return combined


def _copy_bytes(source_path: str, target: int, count: int) -> None:
    """Append the first ``count`` bytes of ``source_path`` to ``target`` inside the kernel."""
    with open(source_path, "rb") as source:
        copied = 0
        while copied < count:
            try:
                step = os.copy_file_range(source.fileno(), target, count - copied)
            except OSError as error:  # an older kernel, or across filesystems
                if error.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                step = os.sendfile(target, source.fileno(), None, count - copied)
            if step == 0:
                raise OSError(errno.EIO, f"{source_path} is shorter than its recorded offset")
            copied += step
