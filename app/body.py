"""The one place that reads request bodies.

:func:`open_body` checks what can be checked from the headers alone (length
present, within the limit, no content coding) before a single body byte is read;
:meth:`RequestBody.chunks` then yields the body in ``chunk_size`` steps, enforcing
the size limit on the way and turning every way a body can end early into
:class:`TruncatedBody`, or :class:`RequestTimeout` when the client stalled for
``SPILLWAY_READ_TIMEOUT`` seconds, or :class:`RequestTooSlow` when it keeps sending, but
less than ``SPILLWAY_MIN_BODY_RATE`` bytes/s over a ``SPILLWAY_MIN_BODY_RATE_WINDOW``
(the first window is the grace period).  The rate is checked between chunks, so the
readers give back what they have once a window's time has passed, rather than wait
until a whole chunk has trickled in.

Server differences stay here and in :mod:`app.servers`.  Each body is read by the
cheapest reader that is still exact: under gunicorn a Content-Length body comes
straight off the socket (:func:`app.servers.gunicorn_body_reader`); under uWSGI
from ``wsgi.input``, which stops at Content-Length itself, and chunked bodies
with ``uwsgi.chunked_read()`` (uWSGI never sets ``wsgi.input_terminated``, so
werkzeug would see them empty); everything else through werkzeug's
``request.stream``.  Copies matter here: on two cores every copy of the body
competes with the SHA-256 for the CPU.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterator

from flask import g, request
from werkzeug.sansio.utils import get_content_length

from . import servers
from .context import settings
from .errors import (BadRequest, LengthRequired, PayloadTooLarge, RequestTimeout, RequestTooSlow,
                     SpillwayError, TruncatedBody, UnsupportedMediaType)

# (error, seconds the failed read waited) -> did the client stall rather than leave?
StallTest = Callable[[Exception, float], bool]


def _timeout_error(error: Exception, _waited: float) -> bool:
    return isinstance(error, TimeoutError)  # gunicorn: socket.timeout from the read timeout


def _uwsgi_stalled(_error: Exception, waited: float) -> bool:
    # uWSGI raises the same OSError for a timeout and a hang-up; a read that waited at
    # least uWSGI's smallest timeout (1 s) while the client is still connected timed out
    return waited >= 1 and servers.uwsgi_client_connected()


class RequestBody:
    def __init__(self, read: Callable[[int], bytes], *, declared_length: int | None,
                 limit: int, chunk_size: int, stalled: StallTest = _timeout_error,
                 min_rate: int = 0, rate_window: float = 30.0):
        self._read = read
        self._stalled = stalled
        self.min_rate = min_rate
        self.rate_window = rate_window
        self.declared_length = declared_length
        self.limit = limit
        self.chunk_size = chunk_size
        self.received = 0
        self.complete = declared_length == 0

    def chunks(self) -> Iterator[bytes]:
        """Yield the body; raise PayloadTooLarge, TruncatedBody or RequestTimeout instead
        of ending early, or RequestTooSlow when it arrives too slowly."""
        window_start, window_received = time.monotonic(), 0
        while True:
            started = time.monotonic()
            try:
                chunk = self._read(self.chunk_size)
            except SpillwayError:
                raise
            except Exception as error:  # every server reports a dropped client its own way
                if self._stalled(error, time.monotonic() - started):
                    raise RequestTimeout(
                        f"no body bytes arrived within the read timeout; got {self.received} "
                        "bytes before the client stalled"
                    ) from error
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
            if self.min_rate and (now := time.monotonic()) - window_start >= self.rate_window:
                self._check_rate(now - window_start, self.received - window_received)
                window_start, window_received = now, self.received
            yield chunk
        if self.declared_length is not None and self.received != self.declared_length:
            raise TruncatedBody(
                f"got {self.received} of {self.declared_length} bytes announced by Content-Length"
            )
        self.complete = True

    def _check_rate(self, seconds: float, received: int) -> None:
        if received < self.min_rate * seconds:
            raise RequestTooSlow(
                f"{received} bytes arrived in the last {seconds:.1f} s, below the minimum of "
                f"{self.min_rate} bytes/s; got {self.received} bytes in all"
            )


def refuse_by_headers(*, chunked: bool, declared: int | None, content_encoding: str | None,
                      limit: int) -> None:
    """Raise what a body's headers alone decide: no length, too large, a content coding.
    Also asked by nginx (app/routes/auth_check.py) before it reads a body."""
    if not chunked and declared is None:
        raise LengthRequired()
    if declared is not None and declared > limit:
        raise PayloadTooLarge(
            f"Content-Length {declared} is larger than the limit of {limit} bytes",
            code="request_too_large",
        )
    coding = (content_encoding or "identity").strip().lower()
    if coding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {coding!r} is not supported; send the bytes as they are",
            code="unsupported_content_encoding",
        )


def open_body(*, limit: int, chunk_size: int) -> RequestBody:
    """Check the current request's body headers and return a reader for the body."""
    headers = request.headers
    environ = request.environ
    chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
    declared = request.content_length  # werkzeug: None whenever the body is chunked
    uwsgi = servers.under_uwsgi(environ)
    length_too = chunked and environ.get("CONTENT_LENGTH", "").strip() != ""
    if length_too:
        if not uwsgi or servers.uwsgi_sees_client_framing(environ):
            raise BadRequest("send Content-Length or Transfer-Encoding: chunked, not both")
        # behind nginx (uwsgi protocol), which took the chunks apart and counted them
        chunked = False
        declared = get_content_length(environ["CONTENT_LENGTH"])
    refuse_by_headers(chunked=chunked, declared=declared,
                      content_encoding=headers.get("Content-Encoding"), limit=limit)
    config = settings()
    timeout = config.read_timeout
    # how long one read may gather before it hands back what it has (None: until full)
    patience = config.min_body_rate_window if config.min_body_rate else None
    servers.prepare_body_read(environ, timeout)
    if chunked and uwsgi:
        read = _uwsgi_chunked_reader(timeout, patience)
    elif uwsgi:
        # uWSGI's input stops at Content-Length itself; werkzeug's LimitedStream on top
        # would copy every chunk twice more (into a bytearray, then out into bytes), and
        # behind nginx with both headers request.stream is empty anyway
        read = environ["wsgi.input"].read
        if patience is not None:
            read = servers.uwsgi_waitless_reader(read)
    else:
        read = servers.gunicorn_body_reader(environ, declared, patience) or request.stream.read
    body = RequestBody(read, declared_length=declared, limit=limit, chunk_size=chunk_size,
                       stalled=_uwsgi_stalled if uwsgi else _timeout_error,
                       min_rate=config.min_body_rate, rate_window=config.min_body_rate_window)
    g.spillway_body = body
    return body


def body_state() -> RequestBody | None:
    """The body opened for the current request, if any (the error handler asks)."""
    return g.get("spillway_body")


def unread_body_size() -> int | None:
    """Body bytes the client may still send: 0 when none, None when unknown (chunked)."""
    body = body_state()
    if body is not None:
        if body.complete:
            return 0
        if body.declared_length is None:
            return None
        return body.declared_length - body.received
    if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        return None
    return request.content_length or 0


def _uwsgi_chunked_reader(timeout: float, patience: float | None) -> Callable[[int], bytes]:
    import uwsgi  # only importable inside a uWSGI worker

    seconds = max(1, math.ceil(timeout))  # chunked_read takes whole seconds; 0 means its default
    finished = False

    def read(size: int) -> bytes:
        # chunked_read returns one client chunk per call (at most uwsgi.ini's
        # chunked-input-limit) and b"" after the last; gather about `size` bytes so a
        # client sending small chunks does not cost one pump step per chunk, but no longer
        # than `patience` (a client trickling tiny chunks)
        nonlocal finished
        parts: list[bytes] = []
        gathered = 0
        hand_back_at = math.inf if patience is None else time.monotonic() + patience
        while gathered < size and not finished:
            chunk = uwsgi.chunked_read(seconds)
            if chunk:
                parts.append(chunk)
                gathered += len(chunk)
                if time.monotonic() >= hand_back_at:
                    break
            else:
                finished = True
        return b"".join(parts)

    return read
