"""A file-like upload body that hashes and reports progress as it is read, in constant memory."""

from __future__ import annotations

import hashlib
import os

from .progress import NoProgress, Progress


class HashingReader:
    """read(n) from disk, updating SHA-256 and progress on the way out.

    __len__ is what is *left* to read: requests takes it as Content-Length before the first
    read, and requests-toolbelt's encoder asks it again to know whether the part is done.
    """

    def __init__(self, path: str, progress: Progress | None = None, start: int = 0,
                 length: int | None = None, sha256=None):
        """The whole file, or ``length`` bytes from ``start`` (a tus PATCH), hashed into
        ``sha256`` when given (a hash carried on from the bytes before ``start``)."""
        self._file = open(path, "rb")
        if start:
            self._file.seek(start)
        whole = os.fstat(self._file.fileno()).st_size
        self.size = max(whole - start, 0) if length is None else length
        self.bytes_read = 0
        self._sha256 = hashlib.sha256() if sha256 is None else sha256
        self.progress = progress or NoProgress()

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 20  # never the whole file at once, whatever the caller asks
        chunk = self._file.read(min(n, max(self.size - self.bytes_read, 0)) or 0)
        if chunk:
            self.bytes_read += len(chunk)
            self._sha256.update(chunk)
            self.progress.update(len(chunk))
        return chunk

    def __len__(self) -> int:
        return max(self.size - self.bytes_read, 0)

    def hexdigest(self) -> str:
        return self._sha256.hexdigest()

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sha256_file(path: str, chunk_size: int = 1 << 20) -> str:
    return sha256_prefix(path, None).hexdigest()


def sha256_prefix(path: str, length: int | None, chunk_size: int = 1 << 20):
    """The running SHA-256 (not yet finished) of the first ``length`` bytes (None: all)."""
    digest = hashlib.sha256()
    left = float("inf") if length is None else length
    with open(path, "rb") as handle:
        while left > 0 and (chunk := handle.read(int(min(chunk_size, left)))):
            digest.update(chunk)
            left -= len(chunk)
    return digest
