"""The storage interface every backend implements.

Uploads go through a :class:`Writer`: bytes are appended, then the writer is either
committed (the file becomes visible, whole, under its id) or aborted (nothing is
left).  Readers only ever see committed files.

The interface is kept narrow on purpose, with the next backends in mind:

* resumable (tus) uploads append across many requests: a writer knows its
  ``offset``, and a backend may later offer ``resume_writer(upload_id)``;
* a file nginx already wrote to disk is taken over with ``adopt`` (a rename on
  local disk; a backend that cannot move it says so and gets a copy);
* an S3-compatible backend maps a writer onto a multipart upload (buffer to
  5 MiB parts, ``CompleteMultipartUpload`` on commit, ``AbortMultipartUpload`` on
  abort) and the metadata onto a small JSON object beside the data.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import BinaryIO, Protocol

_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")


def new_file_id() -> str:
    """A 32-hex-digit id that sorts by creation time (so listing is chronological)."""
    return f"{time.time_ns():016x}{secrets.token_hex(8)}"


def is_file_id(text: str) -> bool:
    return bool(_ID_PATTERN.match(text))


@dataclass(frozen=True)
class StoredFile:
    id: str
    filename: str
    size: int
    sha256: str
    content_type: str
    created: float

    @property
    def created_iso(self) -> str:
        moment = datetime.fromtimestamp(self.created, tz=timezone.utc)
        return moment.isoformat(timespec="seconds").replace("+00:00", "Z")

    def to_record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> "StoredFile":
        return cls(**{name: record[name] for name in cls.__dataclass_fields__})


class Writer(Protocol):
    id: str
    offset: int

    def write(self, chunk: bytes) -> None: ...

    def commit(self, *, filename: str, content_type: str, sha256: str) -> StoredFile: ...

    def abort(self) -> None: ...


class Storage(Protocol):
    def open_writer(self) -> Writer: ...

    def open_reader(self, file_id: str) -> BinaryIO: ...

    def stat(self, file_id: str) -> StoredFile: ...

    def list(self, *, after: str | None = None, limit: int = 100) -> list[StoredFile]: ...

    def delete(self, file_id: str) -> None: ...

    def adopt(self, path: str, *, filename: str, content_type: str,
              sha256: str) -> StoredFile | None:
        """Take over a finished file someone else wrote (nginx's upload temp file).

        The caller has already hashed and checked it.  A backend that can move the
        file in (same filesystem: one rename) does so and returns the stored file;
        one that cannot returns None and the caller copies the bytes in through the
        pump instead.
        """
        ...
