"""Glue for the particular WSGI servers we run under, kept out of the handlers.

An answer sent before the body was read (401, 413, ...) closes the connection,
through :func:`close_after_response`.  gunicorn ignores a ``Connection: close`` set
by the application and would read and discard the rest of a body nobody wants, so
``gunicorn.conf.py`` hands each request to :func:`remember_gunicorn_request` and
the app asks gunicorn to close; uWSGI (``http-socket`` and the ``uwsgi`` protocol)
keeps no connection alive anyway.  Either way, closing a socket with unread bytes
in it sends a TCP reset, which destroys the answer on its way to a client that is
still sending; so the close lingers as nginx's does (:func:`_linger`).

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
  never sends its body at all.  gunicorn would say it on its own before the
  application runs, so :func:`remember_gunicorn_request` takes that over and the
  app says it at the same point as under uWSGI.  Behind nginx, nginx answers it.
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import functools
import math
import os
import select
import socket
import sys
import termios
import threading
import time
from typing import Callable

_local = threading.local()

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


# nginx's lingering_timeout: a client silent this long after the answer is not sending
LINGER_IDLE_SECONDS = 5.0


def remember_gunicorn_request(req) -> None:
    """gunicorn's ``pre_request`` hook: called before gunicorn builds the environ."""
    _local.gunicorn_request = req
    # gunicorn sends "100 Continue" while it builds the environ, before the app could
    # refuse; take the promise over and keep it in prepare_body_read, as under uWSGI
    _local.gunicorn_owes_continue = bool(getattr(req, "_expected_100_continue", False))
    if _local.gunicorn_owes_continue:
        req._expected_100_continue = False


def close_after_response(unread: int | None) -> None:
    """Close the connection once the current answer is out, without a reset.

    ``unread`` is how many body bytes the client may still send (None: unknown, a
    chunked body).  After the server has written the answer, the write side is shut
    (the client reads the answer and an end of stream) and up to ``unread`` bytes, at
    most ``SPILLWAY_LINGER_SIZE``, are read and thrown away for at most
    ``SPILLWAY_LINGER_TIME`` seconds, so that the socket holds nothing unread when the
    server closes it.
    """
    from flask import after_this_request, request  # only ever called inside a request

    from .context import settings

    req = getattr(_local, "gunicorn_request", None)
    if req is not None:
        req.force_close()
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


def gunicorn_body_reader(environ, length: int | None,
                         patience: float | None = None) -> Callable[[int], bytearray] | None:
    """``read(size)`` for a Content-Length body under gunicorn, straight off the socket.

    gunicorn's own body reader gathers each read from 64 KiB recv()s through two
    BytesIO buffers, about five copies of every byte; this one fills each chunk with
    recv_into(), one copy, which left the CPU to the hashing (app/pump.py).  It takes
    over only a body nothing has read yet, and keeps gunicorn's LengthReader count
    right, so gunicorn still knows where the next request on the connection starts.
    None when gunicorn's internals are not what it was written against (then
    ``request.stream`` serves, only slower).  With ``patience``, a read hands back a
    short chunk once that many seconds have passed (the minimum-rate check in
    app/body.py runs between chunks).
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

    failure: BaseException | None = None  # after bytes that arrived before it: raised next

    def read(size: int) -> bytearray:
        nonlocal held, failure
        if failure is not None:
            raise failure
        if held:
            chunk, held = bytearray(held[:size]), held[size:]
            reader.length -= len(chunk)
            return chunk
        chunk = bytearray(min(size, reader.length))
        got = 0
        hand_back_at = math.inf if patience is None else time.monotonic() + patience
        try:
            with memoryview(chunk) as view:
                while got < len(chunk):
                    received = sock.recv_into(view[got:])
                    if not received:
                        body.failed = True  # ended before its Content-Length
                        break
                    got += received
                    if time.monotonic() >= hand_back_at:
                        break
        except BaseException as error:
            body.failed = True  # where the next request starts is unknown now
            if not got:
                raise
            # a stall (timeout) after some bytes: hand them back first, as a cut does,
            # so a resumable upload keeps every byte that arrived
            failure = error
        finally:
            reader.length -= got
        del chunk[got:]
        return chunk

    return read


def uwsgi_waitless_reader(read: Callable[[int], bytes]) -> Callable[[int], bytes]:
    """``read(size)`` under uWSGI that asks for no more than the client has already sent.

    uWSGI's ``wsgi.input.read(size)`` returns only once it has all ``size`` bytes, so a
    client trickling a byte now and then would keep one read going for days, and the
    minimum-rate check (between chunks) would never run.  Asking for at most what the
    kernel holds (or one byte, which waits at most socket-timeout) never waits on a
    trickle; bytes uWSGI read along with the head come first and only make it quicker.
    """
    import uwsgi

    fd = uwsgi.connection_fd()
    waiting = array.array("i", [0])

    def read_waitless(size: int) -> bytes:
        fcntl.ioctl(fd, termios.FIONREAD, waiting)
        return read(min(size, max(waiting[0], 1)))

    return read_waitless


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
    threaded = threads.strip().isdigit() and int(threads) > 1
    for library in _uwsgi_libraries():
        try:
            return _UwsgiCore(library, threaded=threaded)
        except AttributeError:
            continue
    return None


def _uwsgi_libraries():
    """Where uWSGI's exported functions are: the uwsgi binary itself (plugins link against
    it), or, under the pyuwsgi wheel, its extension module, which Python loaded with
    RTLD_LOCAL (so its symbols are not global); dlopen() of it again finds the same copy."""
    yield ctypes.CDLL(None, use_errno=True)
    pyuwsgi = sys.modules.get("pyuwsgi")
    if pyuwsgi is not None and getattr(pyuwsgi, "__file__", None):
        yield ctypes.CDLL(pyuwsgi.__file__, use_errno=True)


def announce_close(response):
    """After every request: under uWSGI's ``http-socket``, which closes each connection
    after one answer, say so (``Connection: close``); it does not, and a client that keeps
    connections alive (node's default agent, tus-js-client) would send its next request
    into a socket being closed and see it reset."""
    from flask import request

    environ = request.environ
    if (under_uwsgi(environ) and environ.get("UWSGI_ROUTER") != "http"
            and _uwsgi_http_socket()):
        response.headers["Connection"] = "close"
    return response


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
        if getattr(_local, "gunicorn_owes_continue", False):
            _local.gunicorn_owes_continue = False
            try:
                sock.sendall(_CONTINUE)
            except OSError:
                pass  # the client is gone; the body read reports it
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
