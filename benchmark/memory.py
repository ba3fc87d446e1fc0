"""Server memory: the RSS of a whole process tree, sampled from /proc on a thread."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from app.testing.servers import children, rss_kib

INTERVAL = 0.02  # seconds between samples


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (a uWSGI router, its workers, their threads' children)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children(current)
    return found


@dataclass
class Footprint:
    """RSS in KiB of the roots (masters, or the only process) and of everything below them."""
    master_kib: int = 0
    workers_kib: int = 0

    @property
    def total_kib(self) -> int:
        return self.master_kib + self.workers_kib


def footprint(roots: list[int]) -> Footprint:
    result = Footprint()
    for root in roots:
        for pid in tree(root):
            try:
                kib = rss_kib(pid)
            except OSError:  # exited between listing and reading
                continue
            if pid == root:
                result.master_kib += kib
            else:
                result.workers_kib += kib
    return result


class PeakSampler:
    """Samples ``footprint(roots)`` every 20 ms until stopped; keeps the peak of each figure."""

    def __init__(self, roots: list[int]):
        self.roots = roots
        self.idle = footprint(roots)
        self.peak = Footprint(self.idle.master_kib, self.idle.workers_kib)
        self.peak_total_kib = self.idle.total_kib
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()  # the very end too

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            self._sample()

    def _sample(self) -> None:
        now = footprint(self.roots)
        self.samples += 1
        self.peak.master_kib = max(self.peak.master_kib, now.master_kib)
        self.peak.workers_kib = max(self.peak.workers_kib, now.workers_kib)
        self.peak_total_kib = max(self.peak_total_kib, now.total_kib)

