"""The one place that reads request bodies.

:func:`open_body` checks what can be checked from the headers alone (length
present, within the limit, no content coding) before a single body byte is read;
:meth:`RequestBody.chunks` then yields the body in ``chunk_size`` steps, enforcing
the size limit on the way and turning every way a body can end early into
:class:`TruncatedBody`.

Server differences stay here and nowhere else: werkzeug's ``request.stream``
covers Content-Length bodies everywhere and chunked bodies under servers that set
``wsgi.input_terminated`` (gunicorn); uWSGI does not set it, so chunked bodies are
read with ``uwsgi.chunked_read()`` there.
"""

from __future__ import annotations

from typing import Callable, Iterator

from flask import g, request

from .errors import (LengthRequired, PayloadTooLarge, SpillwayError, TruncatedBody,
                     UnsupportedMediaType)


class RequestBody:
    def __init__(self, read: Callable[[int], bytes], *, declared_length: int | None,
                 limit: int, chunk_size: int):
        self._read = read
        self.declared_length = declared_length
        self.limit = limit
        self.chunk_size = chunk_size
        self.received = 0
        self.complete = declared_length == 0

    def chunks(self) -> Iterator[bytes]:
        """Yield the body; raise PayloadTooLarge or TruncatedBody instead of ending early."""
        while True:
            try:
                chunk = self._read(self.chunk_size)
            except SpillwayError:
                raise
            except Exception as error:  # every server reports a dropped client its own way
                raise TruncatedBody(
                    f"the body ended after {self.received} bytes: {type(error).__name__}"
                ) from error
            if not chunk:
                break
            self.received += len(chunk)
            if self.received > self.limit:
                raise PayloadTooLarge(
                    f"the body is larger than the limit of {self.limit} bytes",
                    code="request_too_large",
                )
            yield chunk
        if self.declared_length is not None and self.received != self.declared_length:
            raise TruncatedBody(
                f"got {self.received} of {self.declared_length} bytes announced by Content-Length"
            )
        self.complete = True


def open_body(*, limit: int, chunk_size: int) -> RequestBody:
    """Check the current request's body headers and return a reader for the body."""
    headers = request.headers
    chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
    declared = None if chunked else request.content_length
    if not chunked and declared is None:
        raise LengthRequired()
    if declared is not None and declared > limit:
        raise PayloadTooLarge(
            f"Content-Length {declared} is larger than the limit of {limit} bytes",
            code="request_too_large",
        )
    coding = headers.get("Content-Encoding", "identity").strip().lower()
    if coding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {coding!r} is not supported; send the bytes as they are",
            code="unsupported_content_encoding",
        )
    environ = request.environ
    if chunked and "uwsgi.version" in environ:
        read = _uwsgi_chunked_reader()
    else:
        read = request.stream.read
    body = RequestBody(read, declared_length=declared, limit=limit, chunk_size=chunk_size)
    g.spillway_body = body
    return body


def body_state() -> RequestBody | None:
    """The body opened for the current request, if any (the error handler asks)."""
    return g.get("spillway_body")


def _uwsgi_chunked_reader() -> Callable[[int], bytes]:
    import uwsgi  # only importable inside a uWSGI worker

    def read(_size: int) -> bytes:
        # chunked_read returns one client chunk at a time and b"" after the last one
        return uwsgi.chunked_read(60)

    return read
