"""Closing the connection after an early answer (401, 413, ...) without destroying it.

An answer sent before the body was read closes the connection, through
:func:`close_after_response`.  gunicorn ignores a ``Connection: close`` set by the
application and would read and discard the rest of a body nobody wants, so the app asks
gunicorn to close; uWSGI (``http-socket`` and the ``uwsgi`` protocol) keeps no connection
alive anyway.  Either way, closing a socket with unread bytes in it sends a TCP reset,
which destroys the answer on its way to a client that is still sending; so the close
lingers as nginx's does (:func:`_linger`).
"""

from __future__ import annotations

import functools
import os
import select
import socket
import time

from flask import after_this_request, request

from ..context import settings
from . import gunicorn
from .uwsgi import under_uwsgi

# nginx's lingering_timeout: a client silent this long after the answer is not sending
LINGER_IDLE_SECONDS = 5.0


def close_after_response(unread: int | None) -> None:
    """Close the connection once the current answer is out, without a reset.

    ``unread`` is how many body bytes the client may still send (None: unknown, a
    chunked body).  After the server has written the answer, the write side is shut
    (the client reads the answer and an end of stream) and up to ``unread`` bytes, at
    most ``SPILLWAY_LINGER_SIZE``, are read and thrown away for at most
    ``SPILLWAY_LINGER_TIME`` seconds, so that the socket holds nothing unread when the
    server closes it.
    """
    gunicorn.force_close()
    fd = _connection_fd(request.environ)
    if fd is None:
        return
    config = settings()
    linger = functools.partial(
        _linger, fd, config.linger_size if unread is None else min(unread, config.linger_size),
        config.linger_time,
        # uWSGI's router ends the whole session, the client's side too, at the worker's
        # end of stream, and would reset a client still sending; it relays the answer
        # anyway, and the client hangs up once it has read it
        half_close=request.environ.get("UWSGI_ROUTER") != "http")

    @after_this_request
    def linger_on_close(response):
        # a WSGI response's close() runs after the server wrote it, before it closes
        # the socket: gunicorn (gthread handle_request) and uWSGI alike
        response.call_on_close(linger)
        return response


def _connection_fd(environ) -> int | None:
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        return sock.fileno()
    if under_uwsgi(environ):
        import uwsgi

        return uwsgi.connection_fd()
    return None  # another server: it closes the way it does


def _linger(fd: int, budget: int, seconds: float, *, half_close: bool) -> None:
    """nginx's lingering close: shut the write side, then read and discard until the
    client hangs up, ``budget`` bytes are gone, ``seconds`` pass, or it goes quiet for
    LINGER_IDLE_SECONDS."""
    # a second descriptor of the same socket: shutdown() acts on the socket, and the
    # server still closes its own descriptor; poll + MSG_DONTWAIT leave its flags alone
    sock = socket.socket(fileno=os.dup(fd))
    try:
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        deadline = time.monotonic() + seconds
        scratch = bytearray(256 * 1024)
        while budget > 0:
            wait = min(LINGER_IDLE_SECONDS, deadline - time.monotonic())
            if wait <= 0 or not poller.poll(wait * 1000):
                break
            try:
                received = sock.recv_into(scratch, min(budget, len(scratch)),
                                          socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            if not received:
                break  # the client hung up: nothing left to reset
            budget -= received
    except OSError:
        pass  # reset or gone already: nothing to save
    finally:
        sock.close()
