"""The metadata of stored files, in one SQLite database in WAL mode.

A page of ``GET /files`` is one range scan of the primary key (ids sort by
creation time), so it costs the same at ten files and at a million; one JSON
file per stored file meant listing and sorting the whole folder for every page.

Several worker processes share the file: WAL lets readers run while one writer
commits, every transaction is a single short statement, and ``busy_timeout``
makes a writer wait its turn instead of failing.  Each process and thread has
its own connection (a connection must not cross a fork or be shared between
threads).  Commits are durable against a crash of the process; with ``fsync``
(``synchronous=FULL``) against a crash of the machine too.

WAL needs the database on a local filesystem (shared memory between the
processes of one host); several hosts share files through the S3 backend.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from typing import Iterable

from .base import StoredFile, is_file_id

_COLUMNS = ("id", "filename", "size", "sha256", "content_type", "created")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, filename TEXT NOT NULL, size INTEGER NOT NULL,
    sha256 TEXT NOT NULL, content_type TEXT NOT NULL, created REAL NOT NULL
) WITHOUT ROWID
"""
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM files"
_INSERT = f"INSERT OR IGNORE INTO files VALUES ({', '.join('?' * len(_COLUMNS))})"
BUSY_TIMEOUT_MS = 30_000
MMAP_BYTES = 1 << 30  # read pages straight from the page cache: no read() per page


def _row(stored: StoredFile) -> tuple:
    return tuple(getattr(stored, name) for name in _COLUMNS)


class MetadataIndex:
    def __init__(self, path: str, *, fsync: bool = False):
        self.path = path
        self._fsync = fsync
        self._local = threading.local()
        connection = self._connection()
        connection.execute("PRAGMA journal_mode=WAL")  # stored in the file: once is enough
        connection.execute(_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # new thread, or a forked child
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                         isolation_level=None)
            connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            connection.execute(f"PRAGMA synchronous={'FULL' if self._fsync else 'NORMAL'}")
            connection.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
            local.connection, local.pid = connection, os.getpid()
        return local.connection

    def add(self, stored: StoredFile) -> None:
        self._connection().execute(_INSERT, _row(stored))

    def add_many(self, files: Iterable[StoredFile]) -> None:
        connection = self._connection()
        with connection:  # one transaction
            connection.execute("BEGIN IMMEDIATE")
            connection.executemany(_INSERT, (_row(f) for f in files))

    def get(self, file_id: str) -> StoredFile | None:
        row = self._connection().execute(f"{_SELECT} WHERE id = ?", (file_id,)).fetchone()
        return StoredFile(*row) if row else None

    def page(self, after: str | None, limit: int) -> list[StoredFile]:
        rows = self._connection().execute(f"{_SELECT} WHERE id > ? ORDER BY id LIMIT ?",
                                          (after or "", limit)).fetchall()
        return [StoredFile(*row) for row in rows]

    def remove(self, file_id: str) -> bool:
        return self._connection().execute("DELETE FROM files WHERE id = ?",
                                          (file_id,)).rowcount > 0

    def check(self) -> None:
        self._connection().execute("SELECT 1 FROM files LIMIT 1").fetchall()

    def migrate_json_folder(self, folder: str) -> int:
        """Move the one-JSON-per-file metadata of older versions into the index.

        Rows are committed before their JSON files are removed, and inserts ignore
        rows already there, so an interrupted (or concurrent) migration just reruns.
        """
        if not os.path.isdir(folder):
            return 0
        moved = 0
        names = [n for n in os.listdir(folder) if n.endswith(".json") and is_file_id(n[:-5])]
        for start in range(0, len(names), 1000):
            batch = names[start:start + 1000]
            records = []
            for name in batch:
                try:
                    with open(os.path.join(folder, name), encoding="utf-8") as handle:
                        records.append(StoredFile.from_record(json.load(handle)))
                except FileNotFoundError:  # another worker migrated it
                    continue
            self.add_many(records)
            for name in batch:
                try:
                    os.unlink(os.path.join(folder, name))
                except FileNotFoundError:
                    pass
            moved += len(records)
        try:
            os.rmdir(folder)
        except OSError:
            pass  # not empty (a stray file) or already gone
        return moved
