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
  a second before sending), nor does its ``http`` router unless
  ``http-manage-expect`` is on.  The application sends the ``100 Continue``
  itself, just before the first read (through the router, which relays it):
  after auth and the size check had their chance to refuse, so a refused client
  never sends its body at all.  gunicorn sends it on its own before the
  application runs; behind nginx, nginx answers it.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import select
import socket
import threading
from typing import Callable

_local = threading.local()

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def remember_gunicorn_request(req) -> None:
    _local.gunicorn_request = req


def close_after_response() -> None:
    req = getattr(_local, "gunicorn_request", None)
    if req is not None:
        req.force_close()


def gunicorn_body_reader(environ, length: int | None) -> Callable[[int], bytearray] | None:
    """``read(size)`` for a Content-Length body under gunicorn, straight off the socket.

    gunicorn's own body reader gathers each read from 64 KiB recv()s through two
    BytesIO buffers, about five copies of every byte; this one fills each chunk with
    recv_into(), one copy, which left the CPU to the hashing (app/pump.py).  It takes
    over only a body nothing has read yet, and keeps gunicorn's LengthReader count
    right, so gunicorn still knows where the next request on the connection starts.
    None when gunicorn's internals are not what it was written against (then
    ``request.stream`` serves, only slower).
    """
    req = getattr(_local, "gunicorn_request", None)
    sock = environ.get("gunicorn.socket")
    body = getattr(req, "body", None)
    reader = getattr(body, "reader", None)
    unreader = getattr(reader, "unreader", None)
    if (length is None or sock is None or type(reader).__name__ != "LengthReader"
            or not hasattr(unreader, "take_buffered") or getattr(reader, "length", None) != length
            or body.buf.tell()):
        return None
    held = unreader.take_buffered()  # what came in with the headers
    if len(held) > length:
        unreader.unread(held[length:])  # a pipelined next request: gunicorn's, not ours
        held = held[:length]

    def read(size: int) -> bytearray:
        nonlocal held
        if held:
            chunk, held = bytearray(held[:size]), held[size:]
            reader.length -= len(chunk)
            return chunk
        chunk = bytearray(min(size, reader.length))
        got = 0
        try:
            with memoryview(chunk) as view:
                while got < len(chunk):
                    received = sock.recv_into(view[got:])
                    if not received:
                        break
                    got += received
        except BaseException:
            body.failed = True  # where the next request starts is unknown now
            raise
        finally:
            reader.length -= got
        if got < len(chunk):
            body.failed = True
            del chunk[got:]
        return chunk

    return read


def gunicorn_framing_error(error: Exception) -> bool:
    """Did gunicorn's own chunked parser refuse the body as malformed (not just cut short)?"""
    try:
        from gunicorn.http import errors
    except ImportError:
        return False
    if isinstance(error, errors.ChunkMissingTerminator):
        return len(error.term) >= 2  # fewer: the connection ended where the CRLF belonged
    return isinstance(error, errors.ParseException) and not isinstance(error, errors.NoMoreData)


def uwsgi_raw_body_reader(environ, timeout: float) -> Callable[[bytearray, int], int] | None:
    """``read_into(buffer, start) -> count``: the request's next body bytes, exactly as the
    client framed them, into ``buffer[start:]``, under uWSGI; 0 at the end of the
    connection.  None where they cannot be had.

    uWSGI's own chunked reader, ``uwsgi.chunked_read()``, holds a whole client chunk in
    memory (refusing any over ``chunked-input-limit``), reads a malformed size as the end
    of the body, and refuses valid chunk extensions; so the app decodes chunked bodies
    itself (:mod:`app.framing`).  It cannot simply read ``uwsgi.connection_fd()``: uWSGI
    read the head with one read() of up to ``buffer-size`` bytes, and the body bytes that
    came with it wait in uWSGI's request buffer.  ``uwsgi_proto_base_read_body()``, the
    function uWSGI's own body readers call for a plain socket (http-socket, or the uwsgi
    protocol from its router), hands those out first and then read()s the socket; ctypes
    calls it for the current request, found the way uWSGI itself finds it.
    """
    core = _uwsgi_core()
    if core is None or environ.get("HTTPS", "").lower() in ("on", "1"):
        return None  # an SSL socket has its own read function
    wsgi_request = core.current_request()
    if not wsgi_request or any(core.variable(wsgi_request, name) != environ.get(name, "").encode(
            "latin-1") for name in ("REMOTE_ADDR", "REMOTE_PORT", "REQUEST_URI", "HTTP_HOST")):
        return None  # not the request this thread is serving: never read another's body
    import uwsgi

    fd = uwsgi.connection_fd()
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    wait_ms = max(1, int(timeout * 1000))

    def read_into(buffer: bytearray, start: int) -> int:
        while True:
            target = (ctypes.c_char * len(buffer)).from_buffer(buffer)
            got = core.read_body(wsgi_request, ctypes.addressof(target) + start,
                                 len(buffer) - start)
            del target  # the buffer may be resized only once nothing points into it
            if got >= 0:
                return got
            failure = ctypes.get_errno()
            if failure not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                raise OSError(failure, os.strerror(failure))
            if not poller.poll(wait_ms):
                raise TimeoutError(f"nothing to read for {timeout} s")

    return read_into


class _UwsgiCore:
    def __init__(self, library: ctypes.CDLL, threaded: bool):
        self.current_request = (library.threaded_current_wsgi_req if threaded
                                else library.simple_current_wsgi_req)
        self.current_request.argtypes, self.current_request.restype = [], ctypes.c_void_p
        self.read_body = library.uwsgi_proto_base_read_body
        self.read_body.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        self.read_body.restype = ctypes.c_ssize_t
        self._get_var = library.uwsgi_get_var
        self._get_var.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint16,
                                  ctypes.POINTER(ctypes.c_uint16)]
        self._get_var.restype = ctypes.c_void_p

    def variable(self, wsgi_request: int, name: str) -> bytes:
        length = ctypes.c_uint16()
        key = name.encode()
        pointer = self._get_var(wsgi_request, key, len(key), ctypes.byref(length))
        return ctypes.string_at(pointer, length.value) if pointer else b""


@functools.cache
def _uwsgi_core() -> _UwsgiCore | None:
    import uwsgi

    threads = uwsgi.opt.get("threads", b"1")
    threads = threads[-1] if isinstance(threads, list) else threads
    threads = threads.decode() if isinstance(threads, bytes) else str(threads)
    try:
        # the uwsgi binary exports its functions (plugins link against them)
        return _UwsgiCore(ctypes.CDLL(None, use_errno=True),
                          threaded=threads.strip().isdigit() and int(threads) > 1)
    except (OSError, AttributeError):
        return None


def under_uwsgi(environ) -> bool:
    return "uwsgi.version" in environ


def uwsgi_sees_client_framing(environ) -> bool:
    """True when the worker gets the body framed as the client sent it, Expect unanswered.

    That is uWSGI's ``http-socket`` and its ``http`` router (which passes a chunked
    body through as it is: it does not de-chunk).  Behind nginx (``socket``, the uwsgi
    protocol) nginx has already answered ``Expect`` and turned a chunked body into one
    with a Content-Length.
    """
    return environ.get("UWSGI_ROUTER") == "http" or _uwsgi_http_socket()


@functools.cache
def _uwsgi_http_socket() -> bool:
    import uwsgi  # only importable inside a uWSGI worker

    options = uwsgi.opt
    direct = any(name in options for name in ("http-socket", "http11-socket", "https-socket"))
    proxied = any(name in options for name in ("socket", "uwsgi-socket"))
    return direct and not proxied


@functools.cache
def _uwsgi_router_answers_expect() -> bool:
    """``http-manage-expect`` on: the router says "100 Continue" before the app runs.

    uWSGI reads the value with strtoul, so ``true`` means off; a number above 1 is a
    Content-Length cap (the router answers 413 above it), 1 or no value means always.
    """
    import uwsgi

    value = uwsgi.opt.get("http-manage-expect")
    if value is True:
        return True
    digits = (value or b"").strip()
    return digits.isdigit() and int(digits) > 0


def prepare_body_read(environ, timeout: float) -> None:
    """Called once, right before the first body byte is read."""
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        sock.settimeout(timeout)
    elif under_uwsgi(environ) and _expects_continue(environ) and _uwsgi_app_sends_continue(environ):
        import uwsgi

        try:
            os.write(uwsgi.connection_fd(), _CONTINUE)  # 25 bytes into an idle socket
        except OSError:
            pass  # the client is gone; the body read reports it


def _uwsgi_app_sends_continue(environ) -> bool:
    if environ.get("UWSGI_ROUTER") == "http":
        return not _uwsgi_router_answers_expect()
    return _uwsgi_http_socket()


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
