"""Reading a known number of bytes in bounded steps, from any ``read(n)``."""

from __future__ import annotations

from typing import Callable, Iterator


def read_in_chunks(read: Callable[[int], bytes], length: int,
                   chunk_size: int) -> Iterator[bytes]:
    """Up to ``length`` bytes from ``read``, ``chunk_size`` at most per step; ends early
    where the source does (the caller compares what it got with what it wanted)."""
    while length > 0:
        chunk = read(min(chunk_size, length))
        if not chunk:
            return
        length -= len(chunk)
        yield chunk
