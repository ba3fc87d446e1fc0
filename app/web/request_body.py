"""The one place that opens request bodies: the Flask request and the server glue turned
into a :class:`app.core.body.RequestBody`.

:func:`open_body` checks what can be checked from the headers alone (framing valid, length
within the limit, no content coding) before a single body byte is read.  Each body is read
by the cheapest reader that is still exact: under gunicorn a Content-Length body comes
straight off the socket (:func:`app.web.servers.gunicorn.gunicorn_body_reader`); under
uWSGI from ``wsgi.input``, which stops at Content-Length itself, and chunked bodies decoded
from the raw bytes (:func:`app.web.servers.uwsgi.uwsgi_raw_body_reader`; uWSGI never sets
``wsgi.input_terminated``, so werkzeug would see them empty, and its own
``uwsgi.chunked_read()`` holds whole chunks); everything else through werkzeug's
``request.stream``.  Copies matter here: on two cores every copy of the body competes with
the SHA-256 for the CPU.
"""

from __future__ import annotations

from typing import Callable

from flask import g, request

from ..core import framing
from ..core.body import (RequestBody, body_framing, chunked_reader, refuse_by_headers,
                         timed_out)
from ..core.errors import BadRequest, LengthRequired, MalformedChunkedBody, RequestHeadersTooLarge
from ..core.events import request_info
from .context import limits, settings
from .servers import gunicorn, uwsgi


def _uwsgi_stalled(_error: Exception, waited: float) -> bool:
    # uWSGI raises the same OSError for a timeout and a hang-up; a read that waited at
    # least uWSGI's smallest timeout (1 s) while the client is still connected timed out
    return waited >= 1 and uwsgi.uwsgi_client_connected()


def open_body(*, limit: int, chunk_size: int) -> RequestBody:
    """Check the current request's body headers and return a reader for the body."""
    environ = request.environ
    chunked, declared = body_framing(environ.get("HTTP_TRANSFER_ENCODING"),
                                     environ.get("SERVER_PROTOCOL", ""),
                                     _content_length_field(environ))
    under_uwsgi = uwsgi.under_uwsgi(environ)
    if chunked and declared is not None:
        if not under_uwsgi or uwsgi.uwsgi_sees_client_framing(environ):
            raise BadRequest("send Content-Length or Transfer-Encoding: chunked, not both")
        # behind nginx (uwsgi protocol), which took the chunks apart and counted them
        chunked = False
    refuse_by_headers(chunked=chunked, declared=declared,
                      content_encoding=request.headers.get("Content-Encoding"), limit=limit)
    config = settings()
    timeout = config.read_timeout
    # how long one read may gather before it hands back what it has (None: until full)
    patience = config.min_body_rate_window if config.min_body_rate else None
    stalled = timed_out
    raw_chunks = None
    if chunked and under_uwsgi:
        raw_chunks = uwsgi.uwsgi_raw_body_reader(environ, timeout)
        if raw_chunks is None:
            raise LengthRequired("this server cannot read chunked bodies on this socket; "
                                 "send Content-Length")
    if not gunicorn.prepare_body_read(environ, timeout) and under_uwsgi:
        uwsgi.send_continue_if_owed(environ)
    if raw_chunks:
        read = chunked_reader(raw_chunks, patience)
    elif under_uwsgi:
        # uWSGI's input stops at Content-Length itself; werkzeug's LimitedStream on top
        # would copy every chunk twice more (into a bytearray, then out into bytes), and
        # behind nginx with both headers request.stream is empty anyway
        read = environ["wsgi.input"].read
        if patience is not None:
            read = uwsgi.uwsgi_waitless_reader(read)
        stalled = _uwsgi_stalled
    else:
        read = gunicorn.gunicorn_body_reader(environ, declared, patience) or _gunicorn_checked(
            request.stream.read)
    shared = limits()
    if shared is not None:  # the token's byte rate, shaped by pausing between reads
        info = request_info()
        read = shared.paced(read, info.token_name if info else None)
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
        sees_client = uwsgi.under_uwsgi(environ) and uwsgi.uwsgi_sees_client_framing(environ)
        return value if sees_client else None
    return value


def check_request_head() -> None:
    """Refuse a request head over :mod:`app.core.framing`'s bounds (every request, before routing).

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


def _gunicorn_checked(read: Callable[[int], bytes]) -> Callable[[int], bytes]:
    """gunicorn parses chunked bodies itself; say "malformed" where it found them so."""

    def checked(size: int) -> bytes:
        try:
            return read(size)
        except Exception as error:
            if gunicorn.gunicorn_framing_error(error):
                raise MalformedChunkedBody(f"{type(error).__name__}: {error}") from error
            raise

    return checked
