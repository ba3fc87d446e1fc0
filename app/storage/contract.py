"""The storage contract: a small core every backend implements, plus optional capabilities.

Modelled on tusd's split (``DataStore``/``Upload`` plus ``Terminater``, ``Concater``,
``LengthDeferrer`` and ``Locker``), with what tusd leaves to the handler moved
into the store, where every backend gets it right once:

* an append names the offset it expects; a store whose upload is elsewhere
  refuses it (:class:`~app.core.errors.Conflict`, ``offset_mismatch``) before writing;
* the running SHA-256 is saved with the upload (:mod:`.sha256`), so finishing
  needs no second read of the bytes;
* finishing turns the upload into a stored file under the same id, atomically.

Capabilities are ``runtime_checkable`` Protocols, tested with ``isinstance``: the
check is the method itself (nothing to keep in sync with a set of names), and a
type checker narrows the store after the test.  Such a check sees only that the
methods exist, which is all a caller needs to choose a path.

Nothing here imports Flask; errors raised are the classes in :mod:`app.core.errors`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Iterator, Protocol, runtime_checkable

from .base import StoredFile, UploadInfo


class Lock(Protocol):
    def release(self) -> None: ...

    def __enter__(self) -> "Lock": ...

    def __exit__(self, *exc) -> None: ...


class Locker(Protocol):
    """One writer per upload at a time, whichever worker process or host it runs in."""

    def acquire(self, upload_id: str, timeout: float) -> Lock:
        """The upload's lock; :class:`~app.core.errors.Locked` when ``timeout`` seconds pass
        first.  A holder that dies (its process killed) must not keep the lock."""
        ...


class UploadWriter(Protocol):
    """The bytes one request appends to an upload, from ``offset`` on."""

    id: str
    upload: "Upload"
    offset: int  # where the next byte goes
    sha256_state: str | None  # the upload's saved hash state at the offset this writer began

    def write(self, chunk: bytes) -> None: ...

    def save(self, sha256_state: str | None) -> UploadInfo:
        """Record the offset reached and the hash state at it, atomically (the writer
        stays open).  Bytes written after the last save are dropped on the next append."""
        ...

    def close(self) -> None: ...

    # the one-shot path (raw, multipart, import): ------------------------------------
    def commit(self, *, filename: str, content_type: str, sha256: str) -> StoredFile:
        """save + finish: the bytes written so far become a stored file."""
        ...

    def abort(self) -> None:
        """close + terminate: nothing of the upload is left."""
        ...


class Upload(Protocol):
    id: str

    def info(self) -> UploadInfo: ...

    def writer(self, offset: int) -> UploadWriter:
        """Append from ``offset``; Conflict (``offset_mismatch``) unless it is the upload's."""
        ...

    def declare_length(self, length: int) -> None: ...

    def read(self, start: int = 0, stop: int | None = None,
             chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The bytes received so far (up to the recorded offset)."""
        ...

    def finish(self, *, filename: str | None = None, content_type: str | None = None,
               sha256: str | None = None) -> StoredFile:
        """Become a stored file under the same id.  ``sha256`` None: from the saved state."""
        ...

    def terminate(self) -> None: ...


class Store(Protocol):
    locker: Locker

    # uploads
    def create_upload(self, *, length: int | None = None,
                      metadata: dict | None = None) -> Upload: ...

    def get_upload(self, upload_id: str) -> Upload: ...

    def open_writer(self) -> UploadWriter:
        """create_upload() + writer(0): what every one-shot upload starts with."""
        ...

    # stored files
    def stat(self, file_id: str) -> StoredFile: ...

    def open_reader(self, file_id: str) -> BinaryIO:
        """A seekable file-like object (a remote backend answers reads with ranged GETs)."""
        ...

    def read_range(self, file_id: str, start: int = 0, stop: int | None = None,
                   chunk_size: int = 1 << 20) -> Iterator[bytes]: ...

    def list(self, *, after: str | None = None, limit: int = 100) -> list[StoredFile]:
        """Files in id (= creation) order after the cursor ``after``."""
        ...

    def delete(self, file_id: str) -> None: ...


# optional capabilities -------------------------------------------------------------

@runtime_checkable
class Concatenates(Protocol):
    def concatenate(self, upload_ids: list[str], *, metadata: dict | None = None) -> Upload:
        """A new upload holding the given (complete) uploads' bytes, in order."""
        ...


@runtime_checkable
class Presigns(Protocol):
    def presigned_url(self, file_id: str, *, expires_in: float) -> str: ...


@runtime_checkable
class Adopts(Protocol):
    def adopt(self, path: str, *, filename: str, content_type: str,
              sha256: str) -> StoredFile | None:
        """Take over a finished file someone else wrote (nginx's body file), already
        hashed and checked by the caller; None when it cannot be moved in (copy it)."""
        ...


@runtime_checkable
class ExpiresUploads(Protocol):
    def delete_expired(self, now: float | None = None) -> int: ...


@runtime_checkable
class ListsUploads(Protocol):
    def list_uploads(self, *, after: str | None = None, limit: int = 100,
                     where=None) -> list[UploadInfo]:
        """Unfinished uploads in id order after ``after``, those ``where(info)`` accepts."""
        ...


@runtime_checkable
class LocalPaths(Protocol):
    """Stored files are plain local files (what nginx's X-Accel-Redirect needs)."""

    def local_root(self) -> str: ...

    def local_path(self, file_id: str) -> str: ...


@dataclass(frozen=True)
class Health:
    ok: bool
    status: str  # "ok", or what is wrong, as a stable code


@runtime_checkable
class ChecksHealth(Protocol):
    def health(self) -> Health: ...


class OneShotWriter:
    """``commit``/``abort`` of :class:`UploadWriter`, for a backend's writer class."""

    upload: Upload

    def commit(self, *, filename: str, content_type: str, sha256: str) -> StoredFile:
        try:
            self.save(None)  # the digest is final: no state worth saving
            self.close()
            return self.upload.finish(filename=filename, content_type=content_type,
                                      sha256=sha256)
        except BaseException:
            self.abort()  # a one-shot upload that cannot be committed leaves nothing
            raise

    def abort(self) -> None:
        self.close()
        self.upload.terminate()


@runtime_checkable
class SweepsStale(Protocol):
    """Cleans what crashes leave behind (:mod:`app.core.sweep` drives it)."""

    def sweep_stale(self, older_than: float) -> int:
        """Roll interrupted finishes forward; remove bytes without a record older than
        ``older_than`` seconds; how many things were removed."""
        ...

    def upload_ids(self) -> Iterator[str]:
        """The ids of the uploads not yet finished."""
        ...
