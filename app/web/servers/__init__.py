"""Glue for the WSGI servers Spillway runs under, kept out of the handlers.

* :mod:`.gunicorn`: its request object (the ``pre_request`` hook), a Content-Length body
  straight off the socket, the read timeout, "100 Continue" said after auth.
* :mod:`.uwsgi`: its options, a chunked body decoded from the raw connection, reads that
  never wait on a trickle, "100 Continue" under ``http-socket``.
* :mod:`.linger`: closing after an early answer without a reset, under either.
* :mod:`.gunicorn_worker`: gthread with a whole-head deadline.

Only :mod:`app.web.request_body` and :mod:`app.web.errors` call these (and the factory asks
:func:`.uwsgi.threads_available`).

uWSGI's ``http-socket`` never answers ``Expect: 100-continue`` (curl then waits a second
before sending), nor does its ``http`` router unless ``http-manage-expect`` is on.  The
application sends the ``100 Continue`` itself, just before the first read (through the
router, which relays it): after auth and the size check had their chance to refuse, so a
refused client never sends its body at all.  gunicorn would say it on its own before the
application runs, so :func:`.gunicorn.remember_gunicorn_request` takes that over and the
app says it at the same point as under uWSGI.  Behind nginx, nginx answers it.
"""

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
