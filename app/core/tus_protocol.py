"""The tus 1.0.0 resumable-upload protocol, sans I/O: header parsing and formatting.

Nothing here touches Flask, the request or the store; :mod:`app.routes.tus` does.
A header a client got wrong raises :class:`HeaderError`, whose ``code`` is the stable
error code and ``status`` the HTTP status the route answers with.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from email.utils import formatdate
from urllib.parse import urlsplit

from .filenames import clean_filename

VERSION = "1.0.0"
EXTENSIONS = ("creation", "creation-with-upload", "creation-defer-length", "termination",
              "checksum", "expiration", "concatenation")
CHECKSUM_ALGORITHMS = ("sha1", "sha256", "sha512", "md5")
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"

# what a browser page may send and read (CORS)
REQUEST_HEADERS = ("Authorization", "Content-Type", "Upload-Length", "Upload-Offset",
                   "Tus-Resumable", "Upload-Metadata", "Upload-Defer-Length", "Upload-Concat",
                   "Upload-Checksum", "X-HTTP-Method-Override", "X-Requested-With",
                   "X-Request-ID")
RESPONSE_HEADERS = ("Location", "Upload-Offset", "Upload-Length", "Upload-Metadata",
                    "Upload-Defer-Length", "Upload-Concat", "Upload-Expires", "Tus-Version",
                    "Tus-Resumable", "Tus-Extension", "Tus-Max-Size", "Tus-Checksum-Algorithm")
METHODS = ("POST", "GET", "HEAD", "PATCH", "DELETE", "OPTIONS")

_DIGITS = re.compile(r"^[0-9]{1,19}$")
_METADATA_KEY = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # a token, no spaces or commas


class HeaderError(ValueError):
    def __init__(self, message: str, *, code: str = "bad_tus_header", status: int = 400):
        super().__init__(message)
        self.code = code
        self.status = status


def check_version(value: str | None) -> None:
    """Every request but OPTIONS names the protocol version it speaks (412 otherwise)."""
    if (value or "").strip() != VERSION:
        raise HeaderError(f"Tus-Resumable must be {VERSION}, got {value!r}",
                          code="tus_version_unsupported", status=412)


def parse_size(name: str, value: str | None) -> int | None:
    """A non-negative integer header (Upload-Offset, Upload-Length); None when absent."""
    if value is None:
        return None
    value = value.strip()
    if not _DIGITS.match(value):
        raise HeaderError(f"{name} must be a non-negative integer, got {value[:40]!r}")
    return int(value)


def parse_defer_length(value: str | None) -> bool:
    if value is None:
        return False
    if value.strip() != "1":
        raise HeaderError(f"Upload-Defer-Length must be 1, got {value[:40]!r}")
    return True


def parse_metadata(value: str | None) -> dict[str, bytes | None]:
    """``key base64,key2,key3 base64``; an empty header is valid (tuspy sends one)."""
    pairs: dict[str, bytes | None] = {}
    for item in (value or "").split(","):
        item = item.strip()
        if not item:
            continue
        key, _, encoded = item.partition(" ")
        encoded = encoded.strip()
        if not _METADATA_KEY.match(key) or " " in encoded:
            raise HeaderError(f"Upload-Metadata has a malformed pair: {item[:80]!r}",
                              code="bad_upload_metadata")
        if key in pairs:
            raise HeaderError(f"Upload-Metadata names {key!r} twice",
                              code="bad_upload_metadata")
        try:
            pairs[key] = base64.b64decode(encoded, validate=True) if encoded else None
        except binascii.Error:
            raise HeaderError(f"Upload-Metadata value of {key!r} is not base64",
                              code="bad_upload_metadata") from None
    return pairs


def metadata_text(pairs: dict[str, bytes | None], key: str) -> str | None:
    raw = pairs.get(key)
    return raw.decode("utf-8", "replace") if raw else None


@dataclass(frozen=True)
class Checksum:
    algorithm: str
    digest: bytes

    def new_hash(self):
        return hashlib.new(self.algorithm)


def parse_checksum(value: str | None) -> Checksum | None:
    """``Upload-Checksum: <algorithm> <base64 digest>``; None when absent."""
    if value is None:
        return None
    algorithm, _, encoded = value.strip().partition(" ")
    algorithm = algorithm.lower()
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise HeaderError(f"checksum algorithm {algorithm[:20]!r} is not supported; use one of "
                          f"{', '.join(CHECKSUM_ALGORITHMS)}", code="checksum_algorithm_unsupported")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        raise HeaderError("Upload-Checksum is not base64", code="bad_checksum") from None
    if len(digest) != hashlib.new(algorithm).digest_size:
        raise HeaderError(f"an {algorithm} digest is {hashlib.new(algorithm).digest_size} bytes, "
                          f"got {len(digest)}", code="bad_checksum")
    return Checksum(algorithm, digest)


@dataclass(frozen=True)
class Concat:
    partial: bool
    upload_ids: tuple[str, ...] = ()  # of a final upload, in order


def parse_concat(value: str | None, prefix: str) -> Concat | None:
    """``partial``, or ``final;<url> <url> ...`` with URLs (absolute or not) below ``prefix``."""
    if value is None:
        return None
    value = value.strip()
    if value == "partial":
        return Concat(partial=True)
    kind, _, urls = value.partition(";")
    if kind.strip() != "final" or not urls.split():
        raise HeaderError(f"Upload-Concat must be 'partial' or 'final;<url> ...', got "
                          f"{value[:80]!r}", code="bad_upload_concat")
    ids = []
    for url in urls.split():
        path = urlsplit(url).path
        if not path.startswith(prefix) or "/" in path[len(prefix):].strip("/"):
            raise HeaderError(f"Upload-Concat names {url[:120]!r}, not an upload here",
                              code="bad_upload_concat")
        ids.append(path[len(prefix):].strip("/"))
    return Concat(partial=False, upload_ids=tuple(ids))


def format_concat(partial: bool, upload_ids: list[str], prefix: str) -> str:
    if partial:
        return "partial"
    return "final;" + " ".join(prefix + upload_id for upload_id in upload_ids)


def http_date(timestamp: float) -> str:
    """RFC 9110 IMF-fixdate, what Upload-Expires carries."""
    return formatdate(timestamp, usegmt=True)


def server_headers(max_size: int) -> dict[str, str]:
    """What OPTIONS answers: the server's protocol capabilities."""
    return {
        "Tus-Version": VERSION,
        "Tus-Extension": ",".join(EXTENSIONS),
        "Tus-Max-Size": str(max_size),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
    }


def cors_headers(origin: str | None, preflight: bool,
                 allowed: tuple[str, ...] = ("*",)) -> dict[str, str]:
    """CORS for a browser page using tus-js-client (bearer tokens, no cookies): any origin
    with ``*`` in ``allowed``, else the listed ones; others get none, and the browser
    keeps the answer from the page."""
    vary = {} if "*" in allowed else {"Vary": "Origin"}  # the answer depends on it
    if not origin or not ("*" in allowed or origin in allowed):
        return vary
    headers = {"Access-Control-Allow-Origin": "*" if "*" in allowed else origin,
               "Access-Control-Expose-Headers": ", ".join(RESPONSE_HEADERS), **vary}
    if preflight:
        headers.update({"Access-Control-Allow-Methods": ", ".join(METHODS),
                        "Access-Control-Allow-Headers": ", ".join(REQUEST_HEADERS),
                        "Access-Control-Max-Age": "86400"})
    return headers


MEDIA_TYPE = re.compile(r"^[\w!#$&^.+-]{1,127}/[\w!#$&^.+-]{1,127}$")


def metadata_record(header: str | None, concat: Concat | None) -> dict:
    """What an upload records of its Upload-Metadata (and Upload-Concat)."""
    pairs = parse_metadata(header)
    record: dict = {"tus": True}
    filename = metadata_text(pairs, "filename") or metadata_text(pairs, "name")
    if filename:
        record["filename"] = clean_filename(filename)
    content_type = metadata_text(pairs, "filetype") or metadata_text(pairs, "type")
    if content_type and MEDIA_TYPE.match(content_type.strip()):
        record["content_type"] = content_type.strip()
    if header and header.strip():
        record["upload_metadata"] = header.strip()
    if concat is not None:
        record["concat"] = "partial" if concat.partial else "final"
    return record
