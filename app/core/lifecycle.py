"""The one place upload events fire: a store wrapped so that every path through it is seen.

Every upload path (raw, multipart, tus, import, offload) goes through the store's
``open_writer``/``create_upload``, a writer's ``commit``/``abort``, an upload's
``finish``/``terminate`` or ``adopt``; :class:`ObservedStore` wraps those and tells the
:class:`~app.core.events.Lifecycle`: ``post-create``, ``post-receive`` (at most every
``progress_interval`` seconds), ``post-finish``, ``post-terminate``, and ``failed`` (a
one-shot upload that kept nothing, with the error's code).  Each fires once: the
wrappers are only what callers hold, never what the backend calls internally.

It also times storage calls (not the per-chunk ``write``: that is the byte path) and lock
waits, and holds a one-shot upload's lock while it is written, so a sweep never removes
an upload in flight.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from .errors import Locked, SpillwayError
from .events import Lifecycle, UploadEvent, request_info

_ONE_SHOT_LOCK_TIMEOUT = 5.0


class ObservedStore:
    def __init__(self, store, lifecycle: Lifecycle, backend: str):
        self.inner = store
        self.backend = backend
        self._lifecycle = lifecycle
        self.locker = ObservedLocker(store.locker, lifecycle)

    def __getattr__(self, name: str) -> Any:
        # capabilities pass through (isinstance checks see exactly the backend's); the two
        # that produce uploads or files are observed too
        value = getattr(self.inner, name)
        if name == "adopt":
            return self._adopt
        if name == "concatenate":
            return lambda *args, **kwargs: self._upload(
                self.timed("concatenate", value, *args, **kwargs), created=True)
        return value

    def timed(self, operation: str, call, *args, **kwargs):
        started = time.perf_counter()
        failed = True
        try:
            result = call(*args, **kwargs)
            failed = False
            return result
        finally:
            self._lifecycle.storage_call(self.backend, operation,
                                         time.perf_counter() - started, failed)

    def emit(self, name: str, upload_id: str, *, context=None, **fields) -> None:
        info = context or request_info()
        if info is not None:
            info.file_id = upload_id
        self._lifecycle.emit(UploadEvent(
            name, upload_id, request_id=info.request_id if info else None,
            token_name=info.token_name if info else None, **fields))

    def _upload(self, upload, *, created: bool) -> "ObservedUpload":
        if created:
            self.emit("post-create", upload.id, metadata=dict(upload.info().metadata))
        return ObservedUpload(upload, self)

    # the contract ------------------------------------------------------------
    def create_upload(self, *, length: int | None = None, metadata: dict | None = None):
        upload = self.timed("create_upload", self.inner.create_upload, length=length,
                            metadata=metadata)
        self.emit("post-create", upload.id, length=length, metadata=dict(metadata or {}))
        return ObservedUpload(upload, self)

    def get_upload(self, upload_id: str):
        return ObservedUpload(self.timed("get_upload", self.inner.get_upload, upload_id), self)

    def open_writer(self):
        writer = self.timed("open_writer", self.inner.open_writer)
        try:
            lock = self.inner.locker.acquire(writer.id, _ONE_SHOT_LOCK_TIMEOUT)
        except BaseException:
            writer.abort()
            raise
        self.emit("post-create", writer.id)
        return ObservedWriter(writer, ObservedUpload(writer.upload, self), lock=lock)

    def stat(self, file_id: str):
        return self.timed("stat", self.inner.stat, file_id)

    def open_reader(self, file_id: str):
        return self.timed("open_reader", self.inner.open_reader, file_id)

    def read_range(self, file_id: str, start: int = 0, stop: int | None = None,
                   chunk_size: int = 1 << 20):
        return self.timed("read_range", self.inner.read_range, file_id, start, stop, chunk_size)

    def list(self, *, after: str | None = None, limit: int = 100):
        return self.timed("list", self.inner.list, after=after, limit=limit)

    def delete(self, file_id: str) -> None:
        """A stored file removed: told as post-terminate, so whoever heard its post-finish
        hears that it is gone (DELETE, or a multipart request whose later file failed)."""
        self.timed("delete", self.inner.delete, file_id)
        self.emit("post-terminate", file_id)

    def _adopt(self, path: str, *, filename: str, content_type: str, sha256: str):
        started = time.monotonic()
        stored = self.timed("adopt", self.inner.adopt, path, filename=filename,
                            content_type=content_type, sha256=sha256)
        if stored is not None:  # None: the caller copies it in through open_writer
            self.emit("post-create", stored.id, length=stored.size)
            self.emit("post-finish", stored.id, offset=stored.size, length=stored.size,
                      stored=stored.to_record(), duration=time.monotonic() - started)
        return stored


class ObservedUpload:
    def __init__(self, upload, store: ObservedStore):
        self.inner = upload
        self.id = upload.id
        self._store = store

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def info(self):
        return self._store.timed("info", self.inner.info)

    def writer(self, offset: int):
        """An append to an upload that outlives the request (a tus PATCH)."""
        writer = self._store.timed("writer", self.inner.writer, offset)
        self._store.emit("append", self.id, offset=offset)
        return ObservedWriter(writer, self)

    def finish(self, **fields):
        info = self.inner.info()
        stored = self._store.timed("finish", self.inner.finish, **fields)
        self._store.emit("post-finish", self.id, offset=stored.size, length=stored.size,
                         metadata=dict(info.metadata), stored=stored.to_record(),
                         duration=max(0.0, time.time() - info.created))
        return stored

    def terminate(self) -> None:
        self._store.timed("terminate", self.inner.terminate)
        self._store.emit("post-terminate", self.id)


class ObservedWriter:
    """A writer whose commit and abort are events; its write stays the backend's own,
    plus a clock read per chunk only when someone wants post-receive."""

    def __init__(self, writer, upload: ObservedUpload, lock=None):
        self.inner = writer
        self.upload = upload
        self.id = writer.id
        self.sha256_state = writer.sha256_state
        self._lock = lock
        self._store = upload._store
        self._context = request_info()  # write() runs on the pump's thread
        self._opened = time.monotonic()
        lifecycle = self._store._lifecycle
        self._progress_every = lifecycle.progress_interval if lifecycle.wants_progress else None
        self._next_progress = self._opened + (self._progress_every or 0)
        self._receiving = True
        self._store.emit("receiving", self.id, context=self._context)

    @property
    def offset(self) -> int:
        return self.inner.offset

    def write(self, chunk: bytes) -> None:
        self.inner.write(chunk)
        if self._progress_every is not None and time.monotonic() >= self._next_progress:
            self._next_progress = time.monotonic() + self._progress_every
            self._store.emit("post-receive", self.id, context=self._context,
                             offset=self.inner.offset)

    def save(self, sha256_state):
        return self._store.timed("save", self.inner.save, sha256_state)

    def close(self) -> None:
        try:
            self.inner.close()
        finally:
            self._release()

    def commit(self, *, filename: str, content_type: str, sha256: str):
        try:
            stored = self._store.timed("commit", self.inner.commit, filename=filename,
                                       content_type=content_type, sha256=sha256)
        finally:
            self._release()
        self._store.emit("post-finish", self.id, context=self._context, offset=stored.size,
                         length=stored.size, stored=stored.to_record(),
                         duration=time.monotonic() - self._opened)
        return stored

    def abort(self) -> None:
        error = sys.exc_info()[1]  # abort is called while handling what went wrong
        try:
            self._store.timed("abort", self.inner.abort)
        finally:
            self._release()
        self._store.emit("failed", self.id, context=self._context, offset=self.inner.offset,
                         error_code=error_code(error), duration=time.monotonic() - self._opened)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self._receiving:
            self._receiving = False
            self._store.emit("received", self.id, context=self._context)


def error_code(error: BaseException | None) -> str:
    if error is None:
        return "discarded"  # dropped on purpose (an empty multipart file input)
    if isinstance(error, SpillwayError):
        return error.code
    if isinstance(error, (GeneratorExit, ConnectionError)):
        return "client_disconnected"
    return "internal_error"


class ObservedLocker:
    def __init__(self, locker, lifecycle: Lifecycle):
        self.inner = locker
        self._lifecycle = lifecycle

    def acquire(self, upload_id: str, timeout: float):
        started = time.perf_counter()
        try:
            lock = self.inner.acquire(upload_id, timeout)
        except Locked:
            self._lifecycle.lock_wait(time.perf_counter() - started, False)
            raise
        self._lifecycle.lock_wait(time.perf_counter() - started, True)
        return lock
