"""The expiry sweep of unfinished uploads: one thread per worker process.

Started by the first request a process serves (:func:`ensure_sweeper`): a thread started
before uWSGI forks its workers would not run in them.  Any number of sweepers is safe:
the store removes an upload only under its lock, after checking expiry again there.
"""

from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger("spillway")

_started_in: int | None = None  # the pid whose sweeper runs
_starting = threading.Lock()


def sweep_interval(expiry: float) -> float:
    """A quarter of the expiry, within 0.5 s .. 5 min."""
    return max(0.5, min(expiry / 4, 300.0))


def ensure_sweeper(store, expiry: float) -> None:
    """Start this process's sweeper unless it runs already (cheap to call per request)."""
    global _started_in
    if _started_in == os.getpid() or not hasattr(store, "delete_expired"):
        return
    with _starting:
        if _started_in == os.getpid():
            return
        _started_in = os.getpid()
        threading.Thread(target=_sweep, args=(store, sweep_interval(expiry)),
                         name="upload-expiry", daemon=True).start()


def _sweep(store, interval: float) -> None:
    while True:
        time.sleep(interval)
        try:
            removed = store.delete_expired()
            if removed:
                log.info("removed %d expired upload(s)", removed)
        except Exception:
            log.exception("the expiry sweep failed")
