"""Small filesystem steps the local-disk backend repeats."""

from __future__ import annotations

import os


def fsync_path(path: str) -> None:
    """fsync a file, or a directory to make a rename in it durable."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
