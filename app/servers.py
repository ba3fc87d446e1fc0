"""Glue for the particular WSGI servers we run under, kept out of the handlers.

gunicorn ignores a ``Connection: close`` header set by the application, so an
answer sent before the body was read (401, 413, ...) would leave the connection
open and gunicorn would then read and discard the rest of a body nobody wants.
``gunicorn.conf.py`` hands each request to :func:`remember_gunicorn_request`, and
:func:`close_after_response` asks gunicorn to close instead.
"""

from __future__ import annotations

import threading

_local = threading.local()


def remember_gunicorn_request(req) -> None:
    _local.gunicorn_request = req


def close_after_response() -> None:
    req = getattr(_local, "gunicorn_request", None)
    if req is not None:
        req.force_close()
