"""Download responses: full bodies through ``wsgi.file_wrapper``, single ranges,
conditional requests and a safe ``Content-Disposition``.

A full body is handed to the server's file wrapper, so gunicorn and uWSGI can use
sendfile.  A range is streamed by a bounded generator after a seek: a file
wrapper would have the server send from the file's start (uWSGI) or require the
wrapper to honour the position (gunicorn), and werkzeug's own range wrapper reads
and discards everything before the range.
"""

from __future__ import annotations

import unicodedata
from typing import BinaryIO, Iterator
from urllib.parse import quote

from flask import Response, request
from werkzeug.http import http_date, parse_range_header, quote_etag

from ..core.chunks import read_in_chunks
from ..core.digests import content_digest_value
from ..core.errors import RangeNotSatisfiable
from ..storage import StoredFile


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """RFC 6266: an ASCII fallback plus ``filename*`` when the name is not plain ASCII."""
    ascii_name = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
    fallback = "".join(
        ch if " " <= ch < "\x7f" and ch not in '"\\%' else "_" for ch in ascii_name
    ).strip() or "download"
    value = f'{disposition}; filename="{fallback}"'
    if fallback != filename:
        value += "; filename*=UTF-8''" + quote(filename, safe="")
    return value


def _iter_range(handle: BinaryIO, start: int, length: int, chunk_size: int) -> Iterator[bytes]:
    try:
        handle.seek(start)
        yield from read_in_chunks(handle.read, length, chunk_size)
    finally:
        handle.close()


def file_response(stored: StoredFile, handle: BinaryIO, *, chunk_size: int) -> Response:
    """The response for GET/HEAD of a stored file's bytes; takes ownership of ``handle``."""
    response = _described(stored)
    headers = response.headers
    if _not_modified(stored.sha256, stored.created):
        handle.close()
        return _not_modified_response(response)

    byte_range = _requested_range(stored, stored.sha256)
    if byte_range is None:
        response.status_code = 200
        headers["Content-Length"] = str(stored.size)
        headers["Repr-Digest"] = content_digest_value(stored.sha256)
        if request.method == "HEAD":
            handle.close()
        else:
            wrapper = request.environ.get("wsgi.file_wrapper")
            response.response = (wrapper(handle, chunk_size) if wrapper
                                 else _iter_range(handle, 0, stored.size, chunk_size))
            response.direct_passthrough = True
        return response

    start, stop = byte_range
    response.status_code = 206
    headers["Content-Range"] = f"bytes {start}-{stop - 1}/{stored.size}"
    headers["Content-Length"] = str(stop - start)
    if request.method == "HEAD":
        handle.close()
    else:
        response.response = _iter_range(handle, start, stop - start, chunk_size)
        response.direct_passthrough = True
    return response


def accel_response(stored: StoredFile, location: str) -> Response:
    """Headers only: nginx sends the bytes from ``location`` (``X-Accel-Redirect``).

    nginx keeps Content-Type, Content-Disposition and Cache-Control and serves the
    range itself; conditional requests and unsatisfiable ranges are still answered
    here so they behave (and fail, as JSON) exactly as without nginx.
    """
    response = _described(stored)
    if _not_modified(stored.sha256, stored.created):
        return _not_modified_response(response)
    _requested_range(stored, stored.sha256)  # raises 416 for a range outside the file
    response.status_code = 200
    response.headers["Repr-Digest"] = content_digest_value(stored.sha256)
    response.headers["X-Accel-Redirect"] = location
    del response.headers["Accept-Ranges"]  # nginx adds its own
    return response


def redirect_response(stored: StoredFile, location: str) -> Response:
    """302 to ``location`` (a presigned URL of the store, which serves ranges itself);
    conditional requests are still answered here, without a trip to the store."""
    response = _described(stored)
    if _not_modified(stored.sha256, stored.created):
        return _not_modified_response(response)
    response.status_code = 302
    response.headers["Location"] = location
    response.headers["Cache-Control"] = "private, no-store"  # the URL expires
    for name in ("Content-Type", "Content-Disposition", "Accept-Ranges"):
        response.headers.pop(name, None)  # the store's answer carries them
    return response


def _described(stored: StoredFile) -> Response:
    response = Response(mimetype=None, content_type=stored.content_type)
    headers = response.headers
    headers["ETag"] = quote_etag(stored.sha256)
    headers["Last-Modified"] = http_date(stored.created)
    headers["Accept-Ranges"] = "bytes"
    headers["Content-Disposition"] = content_disposition(stored.filename)
    headers["Cache-Control"] = "private, no-cache"
    return response


def _not_modified_response(response: Response) -> Response:
    response.status_code = 304
    for name in ("Content-Type", "Content-Disposition"):
        response.headers.pop(name, None)
    return response


def _not_modified(etag: str, created: float) -> bool:
    if request.if_none_match:
        return request.if_none_match.contains_weak(etag)
    if request.if_modified_since is not None:
        return int(created) <= request.if_modified_since.timestamp()
    return False


def _requested_range(stored: StoredFile, etag: str) -> tuple[int, int] | None:
    """(start, stop) of a satisfiable single range, None for the whole file."""
    header = request.headers.get("Range")
    if not header or request.method not in ("GET", "HEAD"):
        return None
    if_range = request.headers.get("If-Range")
    if if_range and if_range.strip() != quote_etag(etag):
        return None  # the client's copy is stale (or dated): send it all
    parsed = parse_range_header(header)
    if parsed is None or parsed.units != "bytes" or len(parsed.ranges) != 1:
        return None  # unparseable or multi-range: RFC 9110 lets us ignore it
    start, stop = parsed.ranges[0]
    if start < 0:  # suffix range "-N": the last N bytes, all of them if N >= size
        start, stop = max(0, stored.size + start), None
    stop = stored.size if stop is None else min(stop, stored.size)
    if start >= stored.size:
        raise RangeNotSatisfiable(
            f"range {header!r} is outside a file of {stored.size} bytes",
            headers={"Content-Range": f"bytes */{stored.size}"},
        )
    return start, stop
