"""The one place that reads request bodies.

:func:`open_body` checks what can be checked from the headers alone (framing valid
(:mod:`app.framing`), length within the limit, no content coding) before a single
body byte is read;
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
decoded here from the raw bytes (:func:`app.servers.uwsgi_raw_body_reader`; uWSGI
never sets ``wsgi.input_terminated``, so werkzeug would see them empty, and its own
``uwsgi.chunked_read()`` holds whole chunks); everything else through werkzeug's
``request.stream``.  Copies matter here: on two cores every copy of the body
competes with the SHA-256 for the CPU.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterator

from flask import g, request

from . import framing, servers
from .context import settings
from .errors import (BadRequest, RequestHeadersTooLarge, LengthRequired, MalformedChunkedBody,
                     NotImplementedHere, PayloadTooLarge, RequestTimeout, RequestTooSlow,
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
    environ = request.environ
    try:
        chunked = framing.transfer_coding(environ.get("HTTP_TRANSFER_ENCODING"),
                                          environ.get("SERVER_PROTOCOL", ""))
        declared = framing.content_length(_content_length_field(environ))
    except framing.UnsupportedCoding as error:  # RFC 9112 §6.1: 501
        raise NotImplementedHere(str(error), code=error.code) from error
    except framing.FramingError as error:
        raise BadRequest(str(error), code=error.code) from error
    uwsgi = servers.under_uwsgi(environ)
    if chunked and declared is not None:
        if not uwsgi or servers.uwsgi_sees_client_framing(environ):
            raise BadRequest("send Content-Length or Transfer-Encoding: chunked, not both")
        # behind nginx (uwsgi protocol), which took the chunks apart and counted them
        chunked = None
    refuse_by_headers(chunked=bool(chunked), declared=declared,
                      content_encoding=request.headers.get("Content-Encoding"), limit=limit)
    config = settings()
    timeout = config.read_timeout
    # how long one read may gather before it hands back what it has (None: until full)
    patience = config.min_body_rate_window if config.min_body_rate else None
    stalled = _timeout_error
    raw_chunks = None
    if chunked and uwsgi:
        raw_chunks = servers.uwsgi_raw_body_reader(environ, timeout)
        if raw_chunks is None:
            raise LengthRequired("this server cannot read chunked bodies on this socket; "
                                 "send Content-Length")
    servers.prepare_body_read(environ, timeout)
    if raw_chunks:
        read = _chunked_reader(raw_chunks, patience)
    elif uwsgi:
        # uWSGI's input stops at Content-Length itself; werkzeug's LimitedStream on top
        # would copy every chunk twice more (into a bytearray, then out into bytes), and
        # behind nginx with both headers request.stream is empty anyway
        read = environ["wsgi.input"].read
        if patience is not None:
            read = servers.uwsgi_waitless_reader(read)
        stalled = _uwsgi_stalled
    else:
        read = servers.gunicorn_body_reader(environ, declared, patience) or _gunicorn_checked(
            request.stream.read)
    body = RequestBody(read, declared_length=declared, limit=limit, chunk_size=chunk_size,
                       stalled=stalled, min_rate=config.min_body_rate,
                       rate_window=config.min_body_rate_window)
    g.spillway_body = body
    return body


def _content_length_field(environ) -> str | None:
    """CONTENT_LENGTH as the client sent it; None when it sent none.

    An empty CONTENT_LENGTH is how nginx's uwsgi_params and werkzeug's development
    server say "no Content-Length"; only where uWSGI sees the client's own head does an
    empty value mean the client sent an empty field.
    """
    value = environ.get("CONTENT_LENGTH")
    if value is not None and not value.strip():
        sees_client = servers.under_uwsgi(environ) and servers.uwsgi_sees_client_framing(environ)
        return value if sees_client else None
    return value


def check_request_head() -> None:
    """Refuse a request head over :mod:`app.framing`'s bounds (every request, before routing).

    gunicorn refuses those itself; uWSGI passes on any head that fits its buffer.
    """
    problem = framing.head_problem(request.environ)
    if problem:
        raise RequestHeadersTooLarge(problem)


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
    if not framing.announces_body(request.environ):
        return 0
    try:
        return framing.content_length(_content_length_field(request.environ))
    except framing.FramingError:
        return None  # framing nobody can trust: how much follows is unknown


def _chunked_reader(read_into: Callable[[bytearray, int], int],
                    patience: float | None) -> Callable[[int], bytearray]:
    """``read(size)`` of a chunked body from its raw bytes: ``size`` body bytes a call (fewer
    only at the end, or once ``patience`` seconds passed: a client trickling tiny chunks),
    b"" after the last chunk, in memory bounded by ``size`` whatever the chunk sizes.

    Filling each buffer whole costs nothing in waiting: until the last chunk and the
    trailer section have arrived, the client still owes bytes.  It spares the pump a
    step per socket read (uWSGI's router relays bodies in 32 KiB pieces).
    """
    decoder = framing.ChunkedDecoder()
    failure: BaseException | None = None  # after body bytes that arrived before it: raised next

    def read(size: int) -> bytearray:
        nonlocal failure
        if failure is not None:
            raise failure
        buffer = bytearray(size)
        filled = 0  # body bytes gathered at the front of the buffer
        hand_back_at = math.inf if patience is None else time.monotonic() + patience
        while filled < size and not decoder.done:
            if filled and time.monotonic() >= hand_back_at:
                break  # hand back what there is: never an empty read before the end
            try:
                got = read_into(buffer, filled)  # the raw bytes land right after them
                if not got:
                    raise TruncatedBody(f"the chunked body ended after {decoder.body_bytes} "
                                        "bytes, before its last chunk")
            except BaseException as error:
                if not filled:
                    raise
                failure = error  # hand back what arrived first (a resumable upload keeps it)
                break
            try:
                spans = decoder.feed(buffer, filled, filled + got)
            except framing.MalformedChunks as error:
                raise MalformedChunkedBody(str(error)) from error
            filled = _move_to(buffer, filled, spans)
        del buffer[filled:]
        return buffer

    return read


def _move_to(buffer: bytearray, filled: int, spans: list[tuple[int, int]]) -> int:
    """Move the body bytes at ``spans`` to ``buffer[filled:]``; the new count at the front.

    Usually there is nothing to move: one span, right where the raw bytes landed.
    """
    with memoryview(buffer) as view:
        for start, end in spans:
            if start != filled:
                view[filled:filled + end - start] = view[start:end]  # memmove: may overlap
            filled += end - start
    return filled


def _gunicorn_checked(read: Callable[[int], bytes]) -> Callable[[int], bytes]:
    """gunicorn parses chunked bodies itself; say "malformed" where it found them so."""

    def checked(size: int) -> bytes:
        try:
            return read(size)
        except Exception as error:
            if servers.gunicorn_framing_error(error):
                raise MalformedChunkedBody(f"{type(error).__name__}: {error}") from error
            raise

    return checked
