"""The streaming pump: chunk -> enforce the file limit -> hash -> write.

Every upload path (raw, multipart, and later resumable and proxied) pushes its
chunks through a :class:`FileSink`, so the limit, the SHA-256 and the cleanup on
failure are written once.

SHA-256 runs on a second thread: hashlib releases the GIL for large updates, so
the hash of chunk *n* overlaps the socket read and the disk write of chunk *n+1*.
The queue between the two is short, which caps the memory in flight.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from typing import Iterable

from .errors import DigestMismatch, PayloadTooLarge
from .storage import Storage, StoredFile, Writer

_QUEUE_DEPTH = 4
_DONE = None


class Sha256:
    """hashlib.sha256 with an optional worker thread."""

    def __init__(self, threaded: bool = True):
        self._hash = hashlib.sha256()
        self._queue: queue.Queue | None = None
        if threaded:
            self._queue = queue.Queue(maxsize=_QUEUE_DEPTH)
            self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        update = self._hash.update
        while (chunk := self._queue.get()) is not _DONE:
            update(chunk)

    def update(self, chunk: bytes) -> None:
        if self._queue is None:
            self._hash.update(chunk)
        else:
            self._queue.put(chunk)

    def hexdigest(self) -> str:
        self.close()
        return self._hash.hexdigest()

    def close(self) -> None:
        if self._queue is not None:
            self._queue.put(_DONE)
            self._thread.join()
            self._queue = None


class FileSink:
    """Receives one file's bytes: limit, hash and write, in that order."""

    def __init__(self, writer: Writer, *, max_size: int, threaded_hash: bool = True):
        self.writer = writer
        self.max_size = max_size
        self.sha256 = Sha256(threaded=threaded_hash)

    @property
    def size(self) -> int:
        return self.writer.offset

    def write(self, chunk: bytes) -> None:
        if self.writer.offset + len(chunk) > self.max_size:
            raise PayloadTooLarge(
                f"the file is larger than the limit of {self.max_size} bytes",
                code="file_too_large",
            )
        self.sha256.update(chunk)
        self.writer.write(chunk)

    def verify(self, expected_sha256: str | None, filename: str) -> str:
        """The hex SHA-256 of what was written; DigestMismatch if it is not the expected one."""
        digest = self.sha256.hexdigest()
        if expected_sha256 is not None and expected_sha256.lower() != digest:
            raise DigestMismatch(
                f"{filename!r}: the client announced sha256 {expected_sha256.lower()}, "
                f"the bytes received hash to {digest}"
            )
        return digest

    def commit(self, *, filename: str, content_type: str,
               expected_sha256: str | None = None) -> StoredFile:
        digest = self.verify(expected_sha256, filename)
        return self.writer.commit(filename=filename, content_type=content_type, sha256=digest)

    def abort(self) -> None:
        self.sha256.close()
        self.writer.abort()


def store_stream(chunks: Iterable[bytes], storage: Storage, *, max_size: int, filename: str,
                 content_type: str, expected_sha256: str | None = None,
                 threaded_hash: bool = True) -> StoredFile:
    """Pump ``chunks`` into a new stored file; on any failure nothing is kept."""
    sink = FileSink(storage.open_writer(), max_size=max_size, threaded_hash=threaded_hash)
    try:
        for chunk in chunks:
            sink.write(chunk)
        return sink.commit(filename=filename, content_type=content_type,
                           expected_sha256=expected_sha256)
    except BaseException:
        sink.abort()
        raise
