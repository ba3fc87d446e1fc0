"""Glue for the particular WSGI servers we run under, kept out of the handlers.

gunicorn ignores a ``Connection: close`` header set by the application, so an
answer sent before the body was read (401, 413, ...) would leave the connection
open and gunicorn would then read and discard the rest of a body nobody wants.
``gunicorn.conf.py`` hands each request to :func:`remember_gunicorn_request`, and
:func:`close_after_response` asks gunicorn to close instead.  uWSGI needs no such
help: neither its ``http-socket`` nor its ``uwsgi`` protocol socket keeps a
connection alive, so it closes right after the answer without reading on.

Body reads (only :mod:`app.body` calls these):

* gunicorn has no idle bound on body reads at all, so a client that stops
  sending would hold a thread forever: :func:`prepare_body_read` puts a timeout
  on the request's socket (gunicorn makes it blocking again for the next request).
* uWSGI bounds every read by its own ``socket-timeout`` (``uwsgi.ini`` sets it
  from ``SPILLWAY_READ_TIMEOUT``) and reports a timeout and a hang-up as the same
  ``OSError``; :func:`uwsgi_client_connected` tells them apart afterwards.
* uWSGI's ``http-socket`` never answers ``Expect: 100-continue`` (curl then waits
  a second before sending).  The application sends the ``100 Continue`` itself,
  just before the first read: after auth and the size check had their chance to
  refuse, so a refused client never sends its body at all.  gunicorn sends it on
  its own before the application runs; behind nginx, nginx answers it.
"""

from __future__ import annotations

import functools
import os
import socket
import threading

_local = threading.local()

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def remember_gunicorn_request(req) -> None:
    _local.gunicorn_request = req


def close_after_response() -> None:
    req = getattr(_local, "gunicorn_request", None)
    if req is not None:
        req.force_close()


def under_uwsgi(environ) -> bool:
    return "uwsgi.version" in environ


@functools.cache
def uwsgi_speaks_http() -> bool:
    """True when uWSGI parses HTTP itself (``http-socket``): no proxy in front.

    Behind nginx (``socket``, the uwsgi protocol) nginx has already answered
    ``Expect`` and turned a chunked body into one with a Content-Length.
    """
    import uwsgi  # only importable inside a uWSGI worker

    options = uwsgi.opt
    direct = any(name in options for name in ("http-socket", "http11-socket", "https-socket"))
    proxied = any(name in options for name in ("socket", "uwsgi-socket"))
    return direct and not proxied


def prepare_body_read(environ, timeout: float) -> None:
    """Called once, right before the first body byte is read."""
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        sock.settimeout(timeout)
    elif under_uwsgi(environ) and _expects_continue(environ) and uwsgi_speaks_http():
        import uwsgi

        try:
            os.write(uwsgi.connection_fd(), _CONTINUE)  # 25 bytes into an idle socket
        except OSError:
            pass  # the client is gone; the body read reports it


def _expects_continue(environ) -> bool:
    return (environ.get("SERVER_PROTOCOL") == "HTTP/1.1"
            and environ.get("HTTP_EXPECT", "").strip().lower() == "100-continue")


def uwsgi_client_connected() -> bool:
    """After a failed body read under uWSGI: True if the client is still there (it stalled)."""
    import uwsgi

    probe = socket.socket(fileno=os.dup(uwsgi.connection_fd()))
    try:
        # b"" is an orderly hang-up; bytes waiting or nothing yet both mean connected
        return probe.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:  # reset
        return False
    finally:
        probe.close()
