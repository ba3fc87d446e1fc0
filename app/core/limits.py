"""Limits per token: concurrent uploads, requests per minute, bytes per second.

Over a count limit the request is answered 429 (``Retry-After``, code ``too_many_uploads``
or ``too_many_requests``) before any body byte; the byte rate is not refused but shaped:
the body reader sleeps between chunks so the token's uploads together stay within it
(TCP then slows the client).  Every limit is per token name and shared by every worker:

* :class:`SqliteLimitState` (the default): a small SQLite file in the storage directory,
  so it spans the worker processes of one host.  A slot held by a worker killed with -9
  is dropped the next time anyone counts (its pid is gone);
* :class:`app.core.limits_redis.RedisLimitState` with ``SPILLWAY_REDIS_URL``: spans hosts.

With no limit set nothing here runs at all.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
from typing import Callable, Protocol

from .errors import TooManyRequests
from .processes import process_alive

BURST_SECONDS = 1.0  # a token may run this far ahead of its byte rate
CONCURRENCY_RETRY_AFTER = 2.0


class LimitState(Protocol):
    def take_slot(self, token: str, limit: int) -> str | None: ...

    def release_slot(self, token: str, slot: str) -> None: ...

    def count_request(self, token: str, limit: int) -> float:
        """Count a request; 0 if within ``limit`` a minute, else seconds until allowed."""
        ...

    def reserve_bytes(self, token: str, size: int, rate: int) -> float:
        """Book ``size`` bytes at ``rate`` bytes/s; how long to wait before going on."""
        ...


class Limits:
    def __init__(self, state: LimitState, *, concurrent_uploads: int, bytes_per_second: int,
                 requests_per_minute: int, on_refusal: Callable[[str], None] = lambda _: None):
        self.state = state
        self.concurrent_uploads = concurrent_uploads
        self.bytes_per_second = bytes_per_second
        self.requests_per_minute = requests_per_minute
        self._on_refusal = on_refusal

    def check_request(self, token: str | None) -> None:
        if token is None or not self.requests_per_minute:
            return
        wait = self.state.count_request(token, self.requests_per_minute)
        if wait > 0:
            self._on_refusal("requests_per_minute")
            raise TooManyRequests(f"token {token!r} is over its {self.requests_per_minute} "
                                  "requests a minute", retry_after=wait)

    def begin_upload(self, token: str | None) -> Callable[[], None] | None:
        """Take one of the token's upload slots; the function that gives it back."""
        if token is None or not self.concurrent_uploads:
            return None
        slot = self.state.take_slot(token, self.concurrent_uploads)
        if slot is None:
            self._on_refusal("concurrent_uploads")
            raise TooManyRequests(f"token {token!r} already has {self.concurrent_uploads} "
                                  "uploads in flight", code="too_many_uploads",
                                  retry_after=CONCURRENCY_RETRY_AFTER)
        return lambda: self.state.release_slot(token, slot)

    def paced(self, read: Callable[[int], bytes], token: str | None) -> Callable[[int], bytes]:
        """``read``, slowed to the token's byte rate (``read`` itself when there is none)."""
        rate = self.bytes_per_second
        if token is None or not rate:
            return read
        reserve = self.state.reserve_bytes

        def paced_read(size: int) -> bytes:
            data = read(size)
            if data:
                wait = reserve(token, len(data), rate)
                if wait > 0:
                    time.sleep(wait)
            return data

        return paced_read


class SqliteLimitState:
    """The counters in one SQLite file, one short write transaction per call."""

    def __init__(self, path: str):
        self.path = path
        self._local = threading.local()
        self._connection().executescript("""
            CREATE TABLE IF NOT EXISTS slots (
                id TEXT PRIMARY KEY, token TEXT NOT NULL, pid INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS windows (
                token TEXT, minute INTEGER, count INTEGER, PRIMARY KEY (token, minute));
            CREATE TABLE IF NOT EXISTS rates (token TEXT PRIMARY KEY, tat REAL);
        """)

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None or self._local.pid != os.getpid():
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")  # counters, not data: losing them is fine
            self._local.db, self._local.pid = db, os.getpid()
        return db

    def _transaction(self):
        state = self

        class _Transaction:
            def __enter__(self):
                self.db = state._connection()
                self.db.execute("BEGIN IMMEDIATE")
                return self.db

            def __exit__(self, kind, *rest):
                self.db.execute("ROLLBACK" if kind else "COMMIT")

        return _Transaction()

    def take_slot(self, token: str, limit: int) -> str | None:
        with self._transaction() as db:
            pids = [pid for (pid,) in db.execute(
                "SELECT DISTINCT pid FROM slots WHERE token = ?", (token,))]
            for pid in pids:
                if not process_alive(pid):  # killed while uploading
                    db.execute("DELETE FROM slots WHERE pid = ?", (pid,))
            (held,) = db.execute("SELECT COUNT(*) FROM slots WHERE token = ?",
                                 (token,)).fetchone()
            if held >= limit:
                return None
            slot = uuid.uuid4().hex
            db.execute("INSERT INTO slots VALUES (?, ?, ?)", (slot, token, os.getpid()))
            return slot

    def release_slot(self, token: str, slot: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM slots WHERE id = ?", (slot,))

    def count_request(self, token: str, limit: int) -> float:
        now = time.time()
        minute = int(now // 60)
        with self._transaction() as db:
            db.execute("DELETE FROM windows WHERE minute < ?", (minute,))
            (count,) = db.execute(
                "INSERT INTO windows VALUES (?, ?, 1) ON CONFLICT (token, minute) "
                "DO UPDATE SET count = count + 1 RETURNING count", (token, minute)).fetchone()
        return 0.0 if count <= limit else (minute + 1) * 60 - now

    def reserve_bytes(self, token: str, size: int, rate: int) -> float:
        now = time.time()
        with self._transaction() as db:
            row = db.execute("SELECT tat FROM rates WHERE token = ?", (token,)).fetchone()
            tat = max(row[0] if row else now, now) + size / rate
            db.execute("INSERT OR REPLACE INTO rates VALUES (?, ?)", (token, tat))
        return max(0.0, tat - now - BURST_SECONDS)
