"""Progress reporting: a tqdm bar on a terminal, nothing otherwise."""

from __future__ import annotations

import sys
from typing import Callable, Protocol


class Progress(Protocol):
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


class NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


ProgressFactory = Callable[[int, str, int], Progress]  # (total bytes, label, initial) -> bar


def no_progress(total: int, label: str, initial: int = 0) -> Progress:
    return NoProgress()


def tqdm_progress(total: int, label: str, initial: int = 0) -> Progress:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=label, unit="B", unit_scale=True,
                unit_divisor=1024, file=sys.stderr)


def for_terminal(quiet: bool, stream=None) -> ProgressFactory:
    """tqdm when the stream (stderr) is a terminal and not quiet; silent otherwise."""
    stream = stream or sys.stderr
    return tqdm_progress if (not quiet and stream.isatty()) else no_progress
