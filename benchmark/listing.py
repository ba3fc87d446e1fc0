"""Listing cost against the number of stored files: ``python -m benchmark --listing``.

Fills two stores' metadata indexes (metadata only, no blobs), one with 1,000 and
one with 1,000,000 files, and times one ``LocalStorage.list`` page (100 files, the
default page size) after a random cursor, the way a client resumes walking
``GET /files``.  Pages alternate between the two stores, so the load of a shared
machine weighs on both alike.  The goal is a page that costs the same at both
sizes: ratio <= 1.5.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time

from app.storage import LocalStorage, StoredFile

PAGE = 100
SIZES = (1_000, 1_000_000)
GOAL = 1.5


def fill(store: LocalStorage, have: int, want: int, ids: list[str]) -> None:
    """Add files ``have``..``want`` with ids that sort by creation, as real ids do."""
    base = time.time_ns()
    for start in range(have, want, 50_000):
        batch = [StoredFile(f"{base + i:016x}{i:016x}", f"file-{i}.bin", i, "0" * 64,
                            "application/octet-stream", time.time())
                 for i in range(start, min(want, start + 50_000))]
        store.index.add_many(batch)
        ids.extend(f.id for f in batch)


def page_seconds(store: LocalStorage, ids: list[str], rng: random.Random) -> float:
    """The time of one page after a random cursor (one in ten: the first page)."""
    cursor = rng.choice(ids[:-PAGE]) if rng.randrange(10) else None
    started = time.perf_counter()
    page = store.list(after=cursor, limit=PAGE)
    elapsed = time.perf_counter() - started
    assert len(page) == PAGE and (cursor is None or page[0].id > cursor)
    return elapsed


def measure(sizes=SIZES, pages: int = 1000, workdir: str | None = None) -> dict:
    """Median seconds of one page, by number of stored files."""
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="spillway-listing-", dir=workdir) as root:
        stores = {}
        for size in sizes:
            store, ids = LocalStorage(f"{root}/{size}"), []
            fill(store, 0, size, ids)
            stores[size] = (store, ids)
        times = {size: [] for size in sizes}
        for _ in range(pages):
            for size, (store, ids) in stores.items():
                times[size].append(page_seconds(store, ids, rng))
    return {size: statistics.median(found) for size, found in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark --listing")
    parser.add_argument("--listing", action="store_true")
    parser.add_argument("--pages", type=int, default=1000, help="pages timed per size")
    parser.add_argument("--workdir", help="where the index goes (default: the system temp)")
    args = parser.parse_args(argv)
    results = measure(pages=args.pages, workdir=args.workdir)
    small, large = (results[size] for size in SIZES)
    for size, seconds in results.items():
        print(f"one page of {PAGE} at {size:>9,} files: {seconds * 1000:.3f} ms (median)")
    ratio = large / small
    print(f"ratio {SIZES[1]:,} / {SIZES[0]:,}: {ratio:.2f} (goal <= {GOAL}): "
          f"{'met' if ratio <= GOAL else 'MISSED'}")
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
