"""prometheus_client's multiprocess directory: prepared by the launcher, kept small.

With several worker processes each writes its metrics to ``<type>_<pid>.db`` files in
``PROMETHEUS_MULTIPROC_DIR`` and a scrape merges them.  The known traps
(prometheus/client_python #275, #367, #566, #1167, #647) and what is done here:

* the variable must be set before ``prometheus_client`` is imported, and the directory
  emptied once per server start (stale files would add old counts): :func:`prepare_launch`,
  called by the launcher (gunicorn.conf.py at start; under uWSGI by the app in the master,
  before it forks);
* a dead worker's live gauges (uploads in flight) stay up unless someone says it died:
  gunicorn's ``child_exit`` calls :func:`worker_exited`; uWSGI has no such hook, so every
  scrape and sweep also checks which pids in the file names are gone (:func:`reap_dead`);
* per-pid files pile up as workers are recycled and every scrape reads all of them: a
  dead pid's counters and histograms are folded into ``<type>_archive.db`` and its files
  removed, under an exclusive ``flock`` that scrapes take shared, so no scrape sees a
  count twice or not at all.  (A pid reused by a new worker before the reap is possible
  in principle; the kernel hands pids out in turn, so it takes a wrap-around.)
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import glob
import os
import re
import shutil
import tempfile

from .processes import process_alive

ENV = "PROMETHEUS_MULTIPROC_DIR"
_LAUNCHER_ENV = "SPILLWAY_METRICS_LAUNCHER_PID"
_FILE = re.compile(r"^(counter|histogram|summary|gauge_([a-z]+))_(\d+)\.db$")
_LOCK_NAME = ".compaction.lock"
_OWN_PREFIX = "spillway-metrics-"  # the temp directory made when the operator set none
OWN_DIR_ENV = "SPILLWAY_METRICS_TEMP_DIR"  # set to it, for an exit hook outside Python


def prepare_launch(launcher_pid: int) -> str:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` (a new temp directory unless the operator set one)
    and empty it, once per launcher: a reload of the same launcher keeps the counts."""
    launcher = os.getpid() == launcher_pid  # never from a worker: others may be writing
    if os.environ.get(_LAUNCHER_ENV) == str(launcher_pid) and os.environ.get(ENV):
        if launcher:  # uWSGI's binary reload runs its exit hook (uwsgi.ini) first
            os.makedirs(os.environ[ENV], exist_ok=True)
        return os.environ[ENV]
    chosen = os.environ.get(ENV)
    path = chosen or os.path.join(tempfile.gettempdir(), f"{_OWN_PREFIX}{launcher_pid}")
    if launcher:
        if not chosen:  # ours to remove: when the launcher exits, or at the next start
            _remove_orphans()
            atexit.register(_remove_own, path, launcher_pid)  # gunicorn's master
            os.environ[OWN_DIR_ENV] = path  # uWSGI's master runs no atexit: uwsgi.ini does
        os.makedirs(path, exist_ok=True)
        for entry in glob.glob(os.path.join(path, "*.db")):
            os.unlink(entry)
    os.environ[ENV] = path
    os.environ[_LAUNCHER_ENV] = str(launcher_pid)
    return path


def _remove_own(path: str, launcher_pid: int) -> None:
    if os.getpid() == launcher_pid:  # workers inherit the handler
        shutil.rmtree(path, ignore_errors=True)


def _remove_orphans() -> None:
    """Temp directories of launchers that died without running their exit handler."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), f"{_OWN_PREFIX}*")):
        pid = path.rpartition("-")[2]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def directory() -> str | None:
    path = os.environ.get(ENV)
    return path if path and os.path.isdir(path) else None


@contextlib.contextmanager
def _locked(path: str, exclusive: bool, wait: bool = True):
    handle = os.open(os.path.join(path, _LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(handle, mode if wait else mode | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(handle)


def reading(path: str):
    """Hold while merging the files for a scrape."""
    return _locked(path, exclusive=False)


def worker_exited(pid: int) -> None:
    """gunicorn's child_exit: the worker is gone; fold its files in."""
    path = directory()
    if path:
        with _locked(path, exclusive=True):
            _fold(path, {pid})


def reap_dead(path: str | None = None) -> int:
    """Fold in the files of every pid that is no longer running; how many pids."""
    path = path or directory()
    if not path:
        return 0
    dead = {pid for pid in _pids(path) if not process_alive(pid)}
    if not dead:
        return 0
    with _locked(path, exclusive=True, wait=False) as held:
        if not held:  # another process is at it
            return 0
        _fold(path, dead)
    return len(dead)


def file_count(path: str | None = None) -> int:
    path = path or directory()
    return len(glob.glob(os.path.join(path, "*.db"))) if path else 0


def _pids(path: str) -> set[int]:
    found = set()
    for name in os.listdir(path):
        match = _FILE.match(name)
        if match:
            found.add(int(match.group(3)))
    return found


def _fold(path: str, pids: set[int]) -> None:
    from prometheus_client.mmap_dict import MmapedDict

    for name in sorted(os.listdir(path)):
        match = _FILE.match(name)
        if not match or int(match.group(3)) not in pids:
            continue
        source = os.path.join(path, name)
        kind, gauge_mode = match.group(1), match.group(2)
        if gauge_mode is None:
            # sum into the archive through a copy, renamed in whole: a crash half-way
            # leaves the old archive and the source, never a half-added one
            archive = os.path.join(path, f"{kind}_archive.db")
            building = archive + ".new"
            if os.path.exists(archive):
                shutil.copyfile(archive, building)
            merged = MmapedDict(building)
            try:
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(source):
                    current, _ = merged.read_value(key)
                    merged.write_value(key, current + value, timestamp)
            finally:
                merged.close()
            os.rename(building, archive)
        elif not gauge_mode.startswith("live"):
            continue  # a gauge that outlives its process by design: leave it
        os.unlink(source)
