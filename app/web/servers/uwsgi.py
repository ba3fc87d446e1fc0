"""uWSGI glue: its options, its body readers, its way of reporting a stall, "100 Continue".

uWSGI bounds every read by its own ``socket-timeout`` (``uwsgi.ini`` sets it from
``SPILLWAY_READ_TIMEOUT``) and reports a timeout and a hang-up as the same ``OSError``;
:func:`uwsgi_client_connected` tells them apart afterwards.  Chunked bodies are decoded by
the app from the raw connection (:func:`uwsgi_raw_body_reader`).  ``import uwsgi`` works
only inside a uWSGI worker, so every function here imports it late.
"""

from __future__ import annotations

import array
import ctypes
import errno
import fcntl
import functools
import os
import select
import socket
import sys
import termios
from typing import Callable

from . import CONTINUE


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


def send_continue_if_owed(environ) -> None:
    """Called once, right before the first body byte is read: "100 Continue" where uWSGI
    (http-socket, or the router without http-manage-expect) would never say it."""
    if _expects_continue(environ) and _uwsgi_app_sends_continue(environ):
        import uwsgi

        try:
            os.write(uwsgi.connection_fd(), CONTINUE)  # 25 bytes into an idle socket
        except OSError:
            pass  # the client is gone; the body read reports it


def _uwsgi_app_sends_continue(environ) -> bool:
    if environ.get("UWSGI_ROUTER") == "http":
        return not _uwsgi_router_answers_expect()
    return _uwsgi_http_socket()


def _expects_continue(environ) -> bool:
    return (environ.get("SERVER_PROTOCOL") == "HTTP/1.1"
            and environ.get("HTTP_EXPECT", "").strip().lower() == "100-continue")


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


def uwsgi_raw_body_reader(environ, timeout: float) -> Callable[[bytearray, int], int] | None:
    """``read_into(buffer, start) -> count``: the request's next body bytes, exactly as the
    client framed them, into ``buffer[start:]``, under uWSGI; 0 at the end of the
    connection.  None where they cannot be had.

    uWSGI's own chunked reader, ``uwsgi.chunked_read()``, holds a whole client chunk in
    memory (refusing any over ``chunked-input-limit``), reads a malformed size as the end
    of the body, and refuses valid chunk extensions; so the app decodes chunked bodies
    itself (:mod:`app.core.framing`).  It cannot simply read ``uwsgi.connection_fd()``: uWSGI
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


def threads_available() -> bool:
    """False only under a uWSGI started without threads, where a hash thread would never run."""
    try:
        import uwsgi
    except ImportError:
        return True
    options = uwsgi.opt
    threads = options.get("threads", b"1")
    if isinstance(threads, (bytes, str)) and threads.strip() not in (b"", "", b"1", "1"):
        return True
    return bool(options.get("enable-threads"))


def uwsgi_master_pid() -> int | None:
    """The uWSGI master's pid (the launcher of the workers), None when not under uWSGI's
    master."""
    try:
        import uwsgi
    except ImportError:
        return None
    return uwsgi.masterpid() or None


def reload_problem() -> str | None:
    """Why a binary reload of this uWSGI would fail, or None: pyuwsgi re-executes the real
    python behind a virtualenv's symlink unless binary-path is set (unbit/uwsgi#2478)."""
    try:
        import uwsgi
    except ImportError:
        return None
    if sys.prefix == sys.base_prefix or uwsgi.opt.get("binary-path"):
        return None
    return (f"a uWSGI reload (SIGHUP) would start python without this virtualenv and "
            f"fail: set UWSGI_BINARY_PATH={sys.executable} (or binary-path in uwsgi.ini)")
