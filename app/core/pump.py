"""The streaming pump: chunk -> enforce the file limit -> hash -> write.

Every upload path (raw, multipart, import, offload fallback, and resumable
appends) pushes its chunks through a :class:`FileSink` into an upload writer of
the storage contract, so the limit, the SHA-256 and the cleanup on failure are
written once.  The SHA-256 continues from the state saved with the upload
(:mod:`app.core.sha256`), so an upload appended to by several requests, in
several processes, is still hashed from the stream alone.

The request thread only reads the socket.  Hashing and writing each run on a
thread of their own (:class:`_Stage`): recv(), hashlib and write() all release
the GIL, so on two cores the three overlap instead of adding up.  Each stage's
queue is short, which caps the bytes in flight at a few chunks.

Which hash a file gets is a parameter (``hasher``, default :func:`new_sha256`), handed
down by the caller: the benchmark's no-hash variant passes one that does nothing.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterable, Protocol

from ..storage import Storage, StoredFile, Upload, UploadInfo, Writer
from .errors import DigestMismatch, PayloadTooLarge
from .sha256 import Sha256, resume_sha256

_QUEUE_DEPTH = 2
_DONE = object()


class _Stage:
    """Calls ``work(chunk)`` for every chunk, on its own thread when ``threaded``.

    The first exception is kept and raised to the producer on its next call, so
    a full disk stops the upload at once; later chunks are drained unprocessed
    so the producer never blocks on a dead stage.
    """

    def __init__(self, work: Callable[[bytes], object], name: str, threaded: bool):
        self._work = work
        self._error: BaseException | None = None
        self._queue: queue.Queue | None = None
        if threaded:
            self._queue = queue.Queue(maxsize=_QUEUE_DEPTH)
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not _DONE:
            if isinstance(chunk, threading.Event):  # drain(): everything before it is done
                chunk.set()
            elif self._error is None:
                try:
                    self._work(chunk)
                except BaseException as error:  # handed to the producer
                    self._error = error

    def put(self, chunk: bytes) -> None:
        self._raise_error()
        if self._queue is None:
            self._work(chunk)
        else:
            self._queue.put(chunk)

    def drain(self) -> None:
        """Wait until every chunk so far is processed, and keep running."""
        self._raise_error()
        if self._queue is not None:
            drained = threading.Event()
            self._queue.put(drained)
            drained.wait()
        self._raise_error()

    def finish(self) -> None:
        """Wait until every chunk is processed; raise what went wrong, if anything."""
        self._stop()
        self._raise_error()

    def cancel(self) -> None:
        self._error = self._error or _Cancelled()
        self._stop()

    def _stop(self) -> None:
        if self._queue is not None:
            self._queue.put(_DONE)
            self._thread.join()
            self._queue = None

    def _raise_error(self) -> None:
        if self._error is not None and not isinstance(self._error, _Cancelled):
            raise self._error


class _Cancelled(Exception):
    pass


class RunningHash(Protocol):
    def update(self, chunk: bytes) -> None: ...
    def hexdigest(self) -> str: ...
    def state(self) -> str | None: ...


# starts the running hash of an upload, given the writer about to append to it
Hasher = Callable[[Writer], RunningHash]


def new_sha256(writer: Writer) -> Sha256:
    """The running hash of everything ``writer``'s upload holds before its first byte."""
    if writer.offset == 0:
        return Sha256()
    return resume_sha256(writer.sha256_state, lambda: writer.upload.read(0, writer.offset))


class StreamHash:
    """Byte count and SHA-256 of a stream, hashed on its own thread when ``threaded``."""

    def __init__(self, threaded: bool = True, start: RunningHash | None = None):
        self.size = 0
        self._hash = start or Sha256()
        self._stage = _Stage(self._hash.update, "sha256", threaded)
        self._digest: str | None = None

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._stage.put(chunk)

    def hexdigest(self) -> str:
        """Wait for every byte to be hashed; the hex SHA-256."""
        if self._digest is None:
            self._stage.finish()
            self._digest = self._hash.hexdigest()
        return self._digest

    def state(self) -> str | None:
        """Wait for every byte to be hashed; the state to save (None if not exportable)."""
        self._stage.finish()
        return self._hash.state()

    def drained_state(self) -> str | None:
        """Wait for every byte so far to be hashed, and keep hashing; the state to save."""
        self._stage.drain()
        return self._hash.state()

    def cancel(self) -> None:
        self._stage.cancel()


class FileSink:
    """Receives one file's bytes: limit, hash and write, in that order."""

    def __init__(self, writer: Writer, *, max_size: int, threaded: bool = True,
                 hasher: Hasher = new_sha256):
        self.writer = writer
        self.max_size = max_size
        self.size = writer.offset  # the limit is on the whole upload
        self._hash = StreamHash(threaded, hasher(writer))
        self._writing = _Stage(writer.write, "write", threaded)
        self._digest: str | None = None

    def write(self, chunk: bytes) -> None:
        if self.size + len(chunk) > self.max_size:
            raise PayloadTooLarge(
                f"the file is larger than the limit of {self.max_size} bytes",
                code="file_too_large",
            )
        self.size += len(chunk)
        self._hash.update(chunk)
        self._writing.put(chunk)

    def finish(self) -> str:
        """Wait for every byte to be hashed and written; the hex SHA-256."""
        if self._digest is None:
            self._writing.finish()
            self._digest = self._hash.hexdigest()
        return self._digest

    def save(self) -> UploadInfo:
        """Wait for every byte to be written and hashed; record both with the upload."""
        self._writing.finish()
        return self.writer.save(self._hash.state())

    def checkpoint(self) -> UploadInfo:
        """:meth:`save` in the middle of a stream: both stages keep running."""
        self._writing.drain()
        return self.writer.save(self._hash.drained_state())

    def verify(self, expected_sha256: str | None, filename: str) -> str:
        """The hex SHA-256 of what was written; DigestMismatch if it is not the expected one."""
        self.finish()
        if expected_sha256 is not None and expected_sha256.lower() != self._digest:
            raise DigestMismatch(
                f"{filename!r}: the client announced sha256 {expected_sha256.lower()}, "
                f"the bytes received hash to {self._digest}"
            )
        return self._digest

    def commit(self, *, filename: str, content_type: str,
               expected_sha256: str | None = None) -> StoredFile:
        digest = self.verify(expected_sha256, filename)
        return self.writer.commit(filename=filename, content_type=content_type, sha256=digest)

    def cancel(self) -> None:
        """Stop both stages; the writer is left to the caller."""
        self._hash.cancel()
        self._writing.cancel()  # no write may race the writer's cleanup

    def abort(self) -> None:
        self.cancel()
        self.writer.abort()


def store_stream(chunks: Iterable[bytes], storage: Storage, *, max_size: int, filename: str,
                 content_type: str, expected_sha256: str | None = None,
                 threaded: bool = True, hasher: Hasher = new_sha256) -> StoredFile:
    """Pump ``chunks`` into a new stored file; on any failure nothing is kept."""
    sink = FileSink(storage.open_writer(), max_size=max_size, threaded=threaded, hasher=hasher)
    try:
        for chunk in chunks:
            sink.write(chunk)
        return sink.commit(filename=filename, content_type=content_type,
                           expected_sha256=expected_sha256)
    except BaseException:
        sink.abort()
        raise


def append_stream(chunks: Iterable[bytes], upload: Upload, offset: int, *, max_size: int,
                  threaded: bool = True, hasher: Hasher = new_sha256,
                  keep_partial: bool = True, save_every: float | None = None) -> UploadInfo:
    """Append ``chunks`` to ``upload`` at ``offset`` (Conflict if it is elsewhere).

    The caller holds the upload's lock.  When the body breaks off, what arrived is
    kept and recorded, so the client can resume from there (unless not
    ``keep_partial``: a body with a checksum cannot be verified in part); when storing
    fails, the upload stays as it was before this append (or its last save).  With
    ``save_every``, what arrived is also recorded every that many seconds on the way,
    so others see the upload's progress and a killed worker loses at most that much.
    """
    writer = upload.writer(offset)
    try:
        sink = FileSink(writer, max_size=max_size, threaded=threaded, hasher=hasher)
    except BaseException:
        writer.close()
        raise
    try:
        source = iter(chunks)
        interval = save_every if save_every and keep_partial else None
        next_save = time.monotonic() + interval if interval else None
        while True:
            try:
                chunk = next(source)
            except StopIteration:
                break
            except BaseException:  # the body broke off: keep what arrived
                if keep_partial:
                    sink.save()
                raise
            sink.write(chunk)
            if next_save is not None and time.monotonic() >= next_save:
                sink.checkpoint()
                next_save = time.monotonic() + interval
        return sink.save()
    except BaseException:
        sink.cancel()
        raise
    finally:
        writer.close()
