"""A stored object as a seekable, read-only file: each read continues one streaming
ranged GET from the current position; a seek elsewhere starts another.  Nothing is
fetched before the first read, and at most one read's bytes are held."""

from __future__ import annotations

import io
from typing import Iterator

from ..core.chunks import read_in_chunks
from .s3_client import S3Client, translated


class RangedObjectReader:
    """No ``fileno``: servers then send it by reading, not with sendfile."""

    def __init__(self, client: S3Client, key: str, size: int):
        self._client = client
        self._key = key
        self._size = size
        self._position = 0
        self._body = None  # the open GET's body, positioned at self._position

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        target = max(0, base + offset)
        if target != self._position:
            self._drop_body()
            self._position = target
        return target

    def read(self, size: int = -1) -> bytes:
        left = self._size - self._position
        if left <= 0:
            return b""
        size = left if size is None or size < 0 else min(size, left)
        if self._body is None:
            self._body = self._client.call(
                "get_object", Key=self._key, Range=f"bytes={self._position}-")["Body"]
        with translated("get_object"):
            chunk = self._body.read(size)
        if not chunk:  # the object is shorter than its metadata says: it changed or broke
            from ..core.errors import StorageFailed

            raise StorageFailed(f"the object store ended {self._key} early")
        self._position += len(chunk)
        return chunk

    def readinto(self, buffer) -> int:
        chunk = self.read(len(buffer))
        buffer[:len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        self._drop_body()

    def __enter__(self) -> "RangedObjectReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _drop_body(self) -> None:
        body, self._body = self._body, None
        if body is not None:
            body.close()


def read_object_range(client: S3Client, key: str, start: int, stop: int,
                      chunk_size: int) -> Iterator[bytes]:
    """``[start, stop)`` of an object, ``chunk_size`` at a time, from one GET."""
    if stop <= start:
        return
    body = client.call("get_object", Key=key, Range=f"bytes={start}-{stop - 1}")["Body"]
    def read(size: int) -> bytes:
        with translated("get_object"):
            return body.read(size)

    try:
        yield from read_in_chunks(read, stop - start, chunk_size)
    finally:
        body.close()
