"""What every backend stores: ids, stored files and uploads (the interfaces are in
:mod:`.contract`)."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone

from ..core.errors import Conflict

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


@dataclass(frozen=True)
class UploadInfo:
    """An upload in progress: durable and addressable, it outlives the request that made it.

    ``length`` is None while it is deferred.  ``sha256_state`` is the saved running
    hash at ``offset`` (None when the backend could not export it: the bytes are then
    re-hashed once when the upload is resumed or finished elsewhere).
    """

    id: str
    offset: int = 0
    length: int | None = None
    metadata: dict = field(default_factory=dict)
    created: float = 0.0
    expires: float | None = None
    sha256_state: str | None = None

    @property
    def filename(self) -> str:
        return self.metadata.get("filename") or "upload"

    @property
    def content_type(self) -> str:
        return self.metadata.get("content_type") or "application/octet-stream"

    def to_record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> "UploadInfo":
        return cls(**{name: record[name] for name in cls.__dataclass_fields__ if name in record})

    def moved(self, **changes) -> "UploadInfo":
        return replace(self, **changes)

    def check_offset(self, offset: int) -> None:
        """Conflict unless an append at ``offset`` continues this upload."""
        if offset != self.offset:
            raise Conflict(f"upload {self.id} is at offset {self.offset}, not {offset}",
                           code="offset_mismatch")

    def with_length(self, length: int) -> "UploadInfo":
        """This upload with its length declared (Conflict if it contradicts what is known)."""
        if self.length is not None and self.length != length:
            raise Conflict(f"upload {self.id} already has a length of {self.length}",
                           code="length_mismatch")
        if length < self.offset:
            raise Conflict(f"upload {self.id} already holds {self.offset} bytes, more than "
                           f"{length}", code="length_mismatch")
        return replace(self, length=length)
