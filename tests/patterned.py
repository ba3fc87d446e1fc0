"""A large test body computed on demand instead of kept on disk.

Block ``i`` is ``i`` as 8 bytes followed by one fixed random block, so no two blocks are
equal (a misplaced block changes the hash) and any range can be produced again; a
gigabyte costs no disk on the client side, which matters on a CI disk the servers' own
stores already fill.
"""

from __future__ import annotations

import hashlib
import os
from functools import cached_property
from typing import Iterator

BLOCK = 1 << 20


class PatternedBytes:
    def __init__(self, size: int, seed: bytes | None = None):
        self.size = size
        self._tail = (seed or os.urandom(BLOCK))[:BLOCK - 8].ljust(BLOCK - 8, b"\0")
        self._last: tuple[int, bytes] = (-1, b"")

    def _block(self, index: int) -> bytes:
        if self._last[0] != index:  # small reads walk one block many times: build it once
            self._last = (index, index.to_bytes(8, "big") + self._tail)
        return self._last[1]

    def chunks(self, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """The bytes ``[start, stop)`` in pieces of at most one block."""
        stop = self.size if stop is None else stop
        while start < stop:
            index, skip = divmod(start, BLOCK)
            block = self._block(index)
            piece = block if skip == 0 and stop - start >= BLOCK else \
                block[skip:skip + stop - start]
            yield piece
            start += len(piece)

    @cached_property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for piece in self.chunks():
            digest.update(piece)
        return digest.hexdigest()

    def reader(self) -> "PatternedReader":
        return PatternedReader(self)


class PatternedReader:
    """A read-only file of the pattern: ``requests`` sends it with a Content-Length."""

    def __init__(self, pattern: PatternedBytes):
        self._pattern = pattern
        self._position = 0

    def __len__(self) -> int:
        return self._pattern.size - self._position

    def read(self, size: int = -1) -> bytes:
        left = len(self)
        size = left if size is None or size < 0 else min(size, left)
        out = b"".join(self._pattern.chunks(self._position, self._position + size))
        self._position += len(out)
        return out
