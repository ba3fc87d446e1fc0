"""gunicorn glue: its request object, the fast body reader, the read timeout, "100 Continue".

``gunicorn.conf.py`` hands each request to :func:`remember_gunicorn_request` before gunicorn
builds the environ; the rest of this module works on what it kept.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Callable

from . import CONTINUE

_local = threading.local()


def remember_gunicorn_request(req) -> None:
    """gunicorn's ``pre_request`` hook: called before gunicorn builds the environ."""
    _local.gunicorn_request = req
    # gunicorn sends "100 Continue" while it builds the environ, before the app could
    # refuse; take the promise over and keep it in prepare_body_read, as under uWSGI
    _local.gunicorn_owes_continue = bool(getattr(req, "_expected_100_continue", False))
    if _local.gunicorn_owes_continue:
        req._expected_100_continue = False


def gunicorn_body_reader(environ, length: int | None,
                         patience: float | None = None) -> Callable[[int], bytearray] | None:
    """``read(size)`` for a Content-Length body under gunicorn, straight off the socket.

    gunicorn's own body reader gathers each read from 64 KiB recv()s through two
    BytesIO buffers, about five copies of every byte; this one fills each chunk with
    recv_into(), one copy, which left the CPU to the hashing (app/core/pump.py).  It takes
    over only a body nothing has read yet, and keeps gunicorn's LengthReader count
    right, so gunicorn still knows where the next request on the connection starts.
    None when gunicorn's internals are not what it was written against (then
    ``request.stream`` serves, only slower).  With ``patience``, a read hands back a
    short chunk once that many seconds have passed (the minimum-rate check in
    app/core/body.py runs between chunks).
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


def gunicorn_framing_error(error: Exception) -> bool:
    """Did gunicorn's own chunked parser refuse the body as malformed (not just cut short)?"""
    try:
        from gunicorn.http import errors
    except ImportError:
        return False
    if isinstance(error, errors.ChunkMissingTerminator):
        return len(error.term) >= 2  # fewer: the connection ended where the CRLF belonged
    return isinstance(error, errors.ParseException) and not isinstance(error, errors.NoMoreData)


def prepare_body_read(environ, timeout: float) -> bool:
    """Called once, right before the first body byte is read; False when not under gunicorn.

    gunicorn has no idle bound on body reads at all, so a client that stops sending would
    hold a thread forever: this puts a timeout on the request's socket (gunicorn makes it
    blocking again for the next request), then says the "100 Continue" gunicorn owed.
    """
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return False
    sock.settimeout(timeout)
    if getattr(_local, "gunicorn_owes_continue", False):
        _local.gunicorn_owes_continue = False
        try:
            sock.sendall(CONTINUE)
        except OSError:
            pass  # the client is gone; the body read reports it
    return True


def force_close() -> None:
    """Have gunicorn close the connection after this answer (it ignores the app's
    ``Connection: close``); nothing when the request is not gunicorn's."""
    req = getattr(_local, "gunicorn_request", None)
    if req is not None:
        req.force_close()
