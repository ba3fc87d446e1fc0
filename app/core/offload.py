"""nginx direct-upload offload: adopt a body nginx already wrote to a file.

In this mode (``deploy/nginx/offload.conf.template``) nginx asks the auth route
before it reads a body, then writes the whole body to a file in its own temp
directory and passes only the file's path in ``X-File``.  Here that path is
checked, the file hashed in one streaming pass, and moved into storage by a
rename.  nginx deletes the temp file when the request ends, so a file that is
refused here is simply never moved and leaves nothing behind.

The path comes from a request header, so it is checked like any client input:
nginx overwrites ``X-File`` with its own value, but anyone who reaches the
backend directly can send one.  Only regular files strictly inside
``SPILLWAY_NGINX_TEMP_DIR`` (after resolving symlinks) are ever opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from typing import BinaryIO, Iterator

from ..storage import Adopts, Storage, StoredFile
from .errors import (BadRequest, DigestMismatch, Forbidden, PayloadTooLarge, SpillwayError,
                     TruncatedBody)
from .multipart import MultipartResult, MultipartUpload
from .pump import Hasher, new_sha256, store_stream


class TempFileUnreadable(SpillwayError):
    code = "temp_file_unreadable"
    message = ("the nginx temp file cannot be read by Spillway: run the nginx workers as "
               "the same user as Spillway")


def inside_temp_dir(named: str | None, temp_dir: str) -> str:
    """The resolved path of ``named``, if it lies strictly inside ``temp_dir``."""
    if not named:
        raise BadRequest("no body file: nginx sets X-File only for a request with a body",
                         code="no_body_file")
    outside = Forbidden(f"{named[:200]!r} is not inside the nginx temp directory",
                        code="path_outside_temp_dir")
    if "\0" in named or not os.path.isabs(named) or ".." in named.split("/"):
        raise outside
    root = os.path.realpath(temp_dir)
    resolved = os.path.realpath(named)
    if resolved == root or os.path.commonpath([root, resolved]) != root:
        raise outside
    return resolved


@contextlib.contextmanager
def open_regular_file(path: str) -> Iterator[BinaryIO]:
    """Open ``path`` for reading if it is a regular file (never a FIFO, device, directory)."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; no effect on regular files
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise BadRequest(f"no body file at {path!r}", code="no_body_file") from None
    except PermissionError as error:
        raise TempFileUnreadable() from error
    except OSError as error:  # ELOOP (a symlink swapped in), EISDIR, ...
        raise BadRequest(f"cannot open {path!r}: {error.strerror}", code="not_a_regular_file")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BadRequest(f"{path!r} is not a regular file", code="not_a_regular_file")
    with os.fdopen(fd, "rb") as handle:
        yield handle


def read_chunks(handle: BinaryIO, chunk_size: int) -> Iterator[bytes]:
    return iter(lambda: handle.read(chunk_size), b"")


def _check_length(handle: BinaryIO, declared_length: int | None) -> int:
    size = os.fstat(handle.fileno()).st_size
    if declared_length is not None and declared_length != size:
        raise TruncatedBody(f"nginx counted {declared_length} body bytes, the file has {size}")
    return size


def adopt_body_file(named: str | None, *, temp_dir: str, declared_length: int | None,
                    expected_sha256: str | None, storage: Storage, max_size: int, filename: str,
                    content_type: str, chunk_size: int, threaded: bool = True,
                    hasher: Hasher = new_sha256) -> StoredFile:
    """Check, hash and move nginx's body file into storage; nothing kept on any failure."""
    path = inside_temp_dir(named, temp_dir)
    with open_regular_file(path) as handle:
        size = _check_length(handle, declared_length)
        if size > max_size:
            raise PayloadTooLarge(f"the file is larger than the limit of {max_size} bytes",
                                  code="file_too_large")
        digest = hashlib.file_digest(handle, "sha256").hexdigest()  # bounded buffer, GIL released
        if expected_sha256 is not None and expected_sha256.lower() != digest:
            raise DigestMismatch(f"{filename!r}: the client announced sha256 "
                                 f"{expected_sha256.lower()}, the bytes received hash to {digest}")
        stored = (storage.adopt(path, filename=filename, content_type=content_type,
                                sha256=digest) if isinstance(storage, Adopts) else None)
        if stored is None:  # another filesystem or store: copy (and hash again) through the pump
            handle.seek(0)
            stored = store_stream(read_chunks(handle, chunk_size), storage, max_size=max_size,
                                  filename=filename, content_type=content_type,
                                  expected_sha256=digest, threaded=threaded,
                                  hasher=hasher)
    return stored


def parse_multipart_body_file(named: str | None, *, temp_dir: str, declared_length: int | None,
                              upload: MultipartUpload, chunk_size: int) -> MultipartResult:
    """A multipart body nginx wrote to a file: its parts are parsed and stored as usual."""
    path = inside_temp_dir(named, temp_dir)
    with open_regular_file(path) as handle:
        _check_length(handle, declared_length)
        return upload.receive(read_chunks(handle, chunk_size))
