"""Cleanup: expired uploads, what crashed workers left, undelivered hooks, dead metrics files.

One function, :func:`sweep`, behind both ``flask --app wsgi spillway sweep`` (cron) and
the periodic sweep in the workers (:class:`PeriodicSweep`), which an ``flock`` and a stamp
file keep to one run per interval across all of a host's workers.  Through the storage
contract: ``delete_expired`` (uploads nothing was written to for ``SPILLWAY_UPLOAD_TTL``;
an upload being written holds its lock and is skipped, one-shot uploads included, see
:mod:`app.core.lifecycle`) and ``sweep_stale`` (interrupted finishes rolled forward,
temp files and blobs without a record after a day; on S3, abandoned multipart uploads
and ``files/<id>`` objects whose metadata was never written).
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import threading
import time

from ..storage import ExpiresUploads, SweepsStale
from . import metrics_files

log = logging.getLogger("spillway.sweep")

STALE_AFTER = 24 * 3600.0


def sweep(store, hooks=None, *, stale_after: float = STALE_AFTER) -> dict:
    """Run every cleanup once; what each removed (or delivered)."""
    store = getattr(store, "inner", store)  # the backend itself: a sweep is not an upload event
    report = {"expired_uploads": 0, "stale_files": 0, "hooks_redelivered": 0,
              "metrics_pids_folded": 0}
    if isinstance(store, ExpiresUploads):
        report["expired_uploads"] = store.delete_expired()
    if isinstance(store, SweepsStale):
        report["stale_files"] = store.sweep_stale(stale_after)
    if hooks is not None:
        report["hooks_redelivered"] = hooks.redeliver_spooled()
    report["metrics_pids_folded"] = metrics_files.reap_dead()
    return report


class PeriodicSweep:
    """A daemon thread per worker; whichever takes the host-wide lock first when the
    interval is up runs the sweep, the others find the stamp fresh and skip."""

    def __init__(self, run, *, interval: float, state_dir: str):
        self._run = run
        self.interval = interval
        self._lock_path = os.path.join(state_dir, "sweep.lock")
        self._stamp_path = os.path.join(state_dir, "sweep.stamp")
        self._started_pid: int | None = None
        self._guard = threading.Lock()

    def ensure_started(self) -> None:
        """Start the thread in this process (call after the fork: from a request)."""
        if self._started_pid == os.getpid():
            return
        with self._guard:
            if self._started_pid != os.getpid():
                self._started_pid = os.getpid()
                threading.Thread(target=self._loop, name="spillway-sweep", daemon=True).start()

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval * random.uniform(0.5, 1.0))
            try:
                self.run_if_due()
            except Exception:
                log.exception("the periodic sweep failed")

    def run_if_due(self) -> dict | None:
        handle = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # another worker is sweeping
            try:
                if time.time() - os.stat(self._stamp_path).st_mtime < self.interval * 0.9:
                    return None
            except FileNotFoundError:
                pass
            report = self._run()
            with open(self._stamp_path, "w") as stamp:
                stamp.write(f"{os.getpid()}\n")
            log.info("sweep: %s", report)
            return report
        finally:
            os.close(handle)
